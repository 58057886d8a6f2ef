"""How to split the cores for featurize: the bare decode + `predict_on_batch` loop of
bench/featurize.py (a+) over the same N real images, in one process with all the cores as
TensorFlow threads, against one process a core with one thread each (each half the images,
started together after building their models): the split the Spark job uses, one Python
worker a core. Two rounds, printed as seconds, images/s and the ratio, in one run.

    .venv/bin/python bench/featurize_split.py [--n 2000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_line, first_products, real_data_args  # bench/machine.py

LIB = Path(__file__).resolve().parents[1] / "lib"
LOOP = r'''
import os, sys, time, numpy as np, tensorflow as tf
threads, start_at, files = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
sys.path.insert(0, LIB)
from lookbook.config import FeaturizeSettings
from lookbook.features.backbones import resolve_weights
from lookbook.features.feature_model import build_feature_model
from lookbook.io.images import to_array
cache = os.path.expanduser(FeaturizeSettings().weights_cache)
model = build_feature_model("vgg16", resolve_weights("vgg16", "imagenet", cache), 80, 60)
jpegs = [open(f, "rb").read() for f in files]
model.predict_on_batch(np.zeros((64, 80, 60, 3), "float32"))
while time.time() < start_at:
    time.sleep(0.01)
for i in range(0, len(jpegs), 64):
    batch = np.stack([to_array(b, 80, 60) for b in jpegs[i:i + 64]]).astype("float32")
    model.predict_on_batch(batch)
print(time.time() - start_at)
'''


def run(groups: list[list[str]], threads: int) -> float:
    """Seconds until the last of len(groups) processes (`threads` TF threads each) is done."""
    start_at = time.time() + 30  # after every process has imported TF and built its model
    code = f"LIB = {str(LIB)!r}\n{LOOP}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(threads), str(start_at), *files],
                              stdout=subprocess.PIPE, text=True, env=env) for files in groups]
    return max(float(p.communicate()[0].split()[-1]) for p in procs)


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_data_args(parser)
    args = parser.parse_args()
    files = [str(f) for f in first_products(Path(args.data_dir), args.n)[2]]
    cores = os.cpu_count()
    for _ in range(2):
        one = run([files], cores)
        split = run([files[i::cores] for i in range(cores)], 1)
        print(f"1 process x {cores} threads: {one:.1f} s ({len(files) / one:.1f} images/s); "
              f"{cores} processes x 1 thread: {split:.1f} s ({len(files) / split:.1f} "
              f"images/s); ratio {one / split:.2f}", flush=True)


if __name__ == "__main__":
    main()
