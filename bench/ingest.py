"""Ingest benchmark: the whole catalogue through the ingest step (Spark, local[*]) against
reading the same files in one Python process, in the same run.

    .venv/bin/python bench/ingest.py --data-dir ../shared/data/fashion

Baselines, both single process over the same files:
  raw     open() + read() of every image (the floor: I/O only)
  checked raw + what ingest does per image (PIL full decode, sha256)
Ratios are Spark images/s over each baseline's images/s.
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from machine import cpu_line, real_data_args  # bench/machine.py

from lookbook.config import load_config
from lookbook.io.images import inspect_image
from lookbook.pipelines.catalogue_steps import ingest
from lookbook.session import build_spark


def read_raw(files: list[Path]) -> float:
    started = time.perf_counter()
    total = 0
    for f in files:
        total += len(f.read_bytes())
    return time.perf_counter() - started


def read_checked(files: list[Path], max_pixels: int) -> float:
    started = time.perf_counter()
    for f in files:
        data = f.read_bytes()
        inspect_image(data, max_pixels)
        hashlib.sha256(data)
    return time.perf_counter() - started


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_data_args(parser, n=None)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args()
    files = sorted((Path(args.data_dir) / "images").iterdir())
    n = len(files)
    with tempfile.TemporaryDirectory(prefix="lookbook-bench-") as warehouse:
        cfg = load_config(None, [f"data_dir={args.data_dir}", f"warehouse={warehouse}",
                                 f"spark.master={args.master}"])
        spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
        raw_s = read_raw(files)  # also warms the page cache for everything after it
        checked_s = read_checked(files, cfg.ingest.max_image_pixels)
        started = time.perf_counter()
        summary = ingest(spark, cfg).summary
        spark_s = time.perf_counter() - started
        spark.stop()
    rows = [("raw read, 1 process", raw_s), ("read+decode+sha256, 1 process", checked_s),
            (f"Spark ingest job ({args.master}, incl. Delta write)", spark_s)]
    print(f"\n{n:,} images; ingest: {summary}")
    print(f"{'method':<48}{'seconds':>10}{'images/s':>12}")
    for name, s in rows:
        print(f"{name:<48}{s:>10.1f}{n / s:>12,.0f}")
    print(f"ratio Spark / raw read          : {raw_s / spark_s:.3f}")
    print(f"ratio Spark / read+decode+sha256: {checked_s / spark_s:.3f}")


if __name__ == "__main__":
    main()
