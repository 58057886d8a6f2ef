"""Featurize benchmark on N real images, all in one run:

  (a) bare Keras: model.predict in one process over the same decoded images, same backbone,
      batch size and cores (TF threads = cores); (a+) the same loop decoding each batch's
      JPEG bytes first, as the Spark path does;
  (b) the Spark featurize path (local[cores], one TF thread per Python worker), cold (workers
      import TensorFlow and build the model) and warm (workers reused);
  (c) with --bf16: (a) again under Keras mixed_bfloat16, its speed-up and the cosine similarity
      of bf16 to fp32 features.

Prints images/s, the ratios b/a and b/(a+), and achieved GFLOP/s against two ceilings: the
derived fp32 peak (cores x FMA units x lanes x clock: overstated 2x on AMD Zen 4, which runs a
512-bit FMA as two 256-bit halves) and a measured one, a 4096^3 fp32 matmul in TensorFlow on
the same cores in the same run.

    .venv/bin/python bench/featurize.py --n 2000 [--height 80 --width 60] [--bf16]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from machine import cpu_line  # noqa: E402  (bench/machine.py)


def real_slice(data_dir: Path, n: int, out: Path) -> Path:
    """The first n rows of styles.csv with their images linked (not copied)."""
    lines = (data_dir / "styles.csv").read_text().splitlines()
    (out / "images").mkdir(parents=True)
    (out / "styles.csv").write_text("\n".join(lines[:n + 1]) + "\n")
    for line in lines[1:n + 1]:
        pid = line.split(",")[0]
        os.symlink(data_dir / "images" / f"{pid}.jpg", out / "images" / f"{pid}.jpg")
    return out

def fp32_peak_gflops() -> tuple[float, str]:
    """cores x FMA units x fp32 lanes x 2 (multiply+add) x clock."""
    cores = os.cpu_count()
    info = Path("/proc/cpuinfo").read_text()
    flags = re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    # Server cores with AVX-512 and AMX (Sapphire Rapids and later) have 2 512-bit FMA units.
    fma_units = 2 if "amx_tile" in flags or "avx512f" in flags else 1
    mhz = max(float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M))
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M).group(1)
    peak = cores * fma_units * lanes * 2 * mhz / 1000
    how = (f"{model}: {cores} cores x {fma_units} FMA units x {lanes} fp32 lanes x 2 flop/FMA "
           f"x {mhz / 1000:.2f} GHz = {peak:.0f} GFLOP/s")
    return peak, how

def conv_gflop_per_image(model) -> float:
    """Multiply-adds of every Conv2D (x2 flops), from the layers' output shapes."""
    import keras

    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin * cout
    return total / 1e9

def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)

def bare_keras(images: np.ndarray, files: list[Path], args, cache: str, precision: str) -> BareRun:
    """model.predict over all images after a warm-up; the same with decoding (`files`, the
    images' JPEGs, in the same order); a large matmul; in one fresh process."""
    code = f"""
import os, sys, time, numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads({os.cpu_count()})
import keras
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'lib')!r})
if {precision!r} == "bf16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
from lookbook.features.backbones import build_feature_model, resolve_weights
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from featurize import conv_gflop_per_image
images = np.load(sys.argv[1])
weights = resolve_weights({args.backbone!r}, "imagenet", {cache!r})
model = build_feature_model({args.backbone!r}, weights, {args.height}, {args.width})
model.predict(images[:{args.batch_size}], batch_size={args.batch_size}, verbose=0)
start = time.perf_counter()
features = model.predict(images, batch_size={args.batch_size}, verbose=0)
seconds = time.perf_counter() - start
from lookbook.io.images import to_array
jpegs = [open(f, "rb").read() for f in open(sys.argv[3]).read().split()]
start = time.perf_counter()
for i in range(0, len(jpegs), {args.batch_size}):
    batch = np.stack([to_array(b, {args.height}, {args.width}) for b in jpegs[i:i + {args.batch_size}]])
    model.predict_on_batch(batch.astype("float32"))
with_decode = time.perf_counter() - start
a = tf.random.normal((4096, 4096)); b = tf.random.normal((4096, 4096))
tf.linalg.matmul(a, b).numpy()
start = time.perf_counter()
for _ in range(5):
    tf.linalg.matmul(a, b).numpy()
matmul = 5 * 2 * 4096 ** 3 / (time.perf_counter() - start) / 1e9
np.save(sys.argv[2], np.asarray(features, dtype="float32"))
print(seconds, with_decode, matmul, conv_gflop_per_image(model))
"""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/in.npy", images)
        Path(f"{tmp}/files.txt").write_text("\n".join(str(f) for f in files))
        out = subprocess.run([sys.executable, "-c", code, f"{tmp}/in.npy", f"{tmp}/out.npy",
                              f"{tmp}/files.txt"], check=True, capture_output=True, text=True)
        seconds, with_decode, matmul, gflop = map(float, out.stdout.split()[-4:])
        return BareRun(seconds, with_decode, matmul, gflop, np.load(f"{tmp}/out.npy"))


@dataclass
class BareRun:
    seconds: float  # predict over decoded images
    with_decode: float  # the same loop, decoding each batch's JPEG bytes first
    matmul_gflops: float  # the measured ceiling
    gflop_per_image: float
    features: np.ndarray

def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)

def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir",
                        default=str(Path(__file__).resolve().parents[2] / "shared/data/fashion"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    from lookbook.config import load_config
    from lookbook.features.featurize import featurize_products, prepare_model
    from lookbook.io.catalog import Catalog
    from lookbook.io.images import to_array
    from lookbook.pipelines.catalogue import ingest
    from lookbook.session import build_spark

    cores = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="lookbook-bench-") as tmp:
        catalogue = real_slice(Path(args.data_dir), args.n, Path(tmp) / "catalogue")
        cfg = load_config(None, [f"data_dir={catalogue}", f"warehouse={tmp}/wh",
                                 f"spark.master=local[{cores}]"])
        cache = str(Path(cfg.featurize.weights_cache).expanduser())
        spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
        ingest(spark, cfg)
        products = Catalog(spark, cfg.warehouse).read("products").persist()
        rows = products.select("product_id", "image").orderBy("product_id").collect()
        images = np.stack([to_array(bytes(r["image"]), args.height, args.width)
                           for r in rows]).astype("float32")

        files = [catalogue / "images" / f"{r['product_id']}.jpg" for r in rows]
        bare = bare_keras(images, files, args, cache, "fp32")
        a_s, a_features, gflop = bare.seconds, bare.features, bare.gflop_per_image

        spec = prepare_model(spark, args.backbone, "imagenet", cache, args.height, args.width,
                             batch_size=args.batch_size, threads=1)
        timings = []
        for _ in ("cold", "warm"):
            start = time.perf_counter()
            spark_rows = (featurize_products(products, spec, cfg.featurize.rows_per_partition)
                          .select("product_id", "embedding").orderBy("product_id").collect())
            timings.append(time.perf_counter() - start)
        b_features = np.array([r["embedding"] for r in spark_rows], dtype="float32")
        spark.stop()

    n = len(images)
    peak, how = fp32_peak_gflops()
    print(f"\n{n:,} real images, {args.backbone} {args.height}x{args.width}, batch {args.batch_size}, "
          f"{cores} cores; {gflop:.2f} GFLOP per image (conv layers)")
    print(f"fp32 peak, derived: {how}")
    print(f"fp32 ceiling, measured: {bare.matmul_gflops:.0f} GFLOP/s (4096^3 matmul, TensorFlow, "
          f"{cores} threads)")
    print(f"{'method':<44}{'seconds':>9}{'images/s':>10}{'GFLOP/s':>9}{'% derived':>10}"
          f"{'% measured':>11}")
    for name, s in [("(a) bare Keras predict, 1 process", a_s),
                    ("(a+) bare Keras, decoding in the loop", bare.with_decode),
                    ("(b) Spark featurize, cold workers", timings[0]),
                    ("(b) Spark featurize, warm workers", timings[1])]:
        rate = n * gflop / s
        print(f"{name:<44}{s:>9.1f}{n / s:>10.1f}{rate:>9.0f}{100 * rate / peak:>9.0f}%"
              f"{100 * rate / bare.matmul_gflops:>10.0f}%")
    print(f"ratio b/a (images/s): cold {a_s / timings[0]:.2f}, warm {a_s / timings[1]:.2f}; "
          f"b/(a+): cold {bare.with_decode / timings[0]:.2f}, warm {bare.with_decode / timings[1]:.2f}")
    print(f"Spark vs bare Keras features: min cosine {cosine(a_features, b_features).min():.6f}")
    if args.bf16:
        bf16 = bare_keras(images, files, args, cache, "bf16")
        c_s, c_features = bf16.seconds, bf16.features
        cos = cosine(a_features, c_features)
        print(f"(c) bare Keras bf16: {c_s:.1f} s, {n / c_s:.1f} images/s, speed-up x{a_s / c_s:.2f}; "
              f"cosine to fp32: mean {cos.mean():.5f}, min {cos.min():.5f}")

if __name__ == "__main__":
    main()
