"""Augmentation throughput on real images, both in one run on the same cores:

  (a) plain Python: one process making every copy in a loop (the transforms module alone);
  (b) Spark: `make_copies`, the pandas UDF the augment step runs (local[cores]), cold (Python
      workers start) and warm.

Prints copies/s and the ratio b/a, and checks that both made the same bytes.

    .venv/bin/python bench/augment.py --parents 1000 --copies 4
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from machine import cpu_line, real_data_args  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from lookbook.augment.copies import make_copies  # noqa: E402
from lookbook.augment.transforms import (  # noqa: E402
    TransformRanges,
    augment_image,
    copy_parameters,
)
from lookbook.config import AugmentSettings  # noqa: E402
from lookbook.pipelines.augment_steps import transform_ranges  # noqa: E402


def parent_images(data_dir: Path, n: int) -> list[tuple[int, bytes]]:
    files = sorted((data_dir / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:n]
    return [(int(p.stem), p.read_bytes()) for p in files]


def plain_python(parents: list[tuple[int, bytes]], copies: int,
                 ranges: TransformRanges) -> dict:
    return {f"{pid}:aug{i}": augment_image(data, copy_parameters(0, pid, i, ranges))
            for pid, data in parents for i in range(copies)}


def main() -> None:
    parser = argparse.ArgumentParser()
    real_data_args(parser, n=None)
    parser.add_argument("--parents", type=int, default=1000)
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    print(cpu_line())
    parents = parent_images(Path(args.data_dir), args.parents)
    ranges = transform_ranges(AugmentSettings())  # the config's defaults
    n = len(parents) * args.copies
    print(f"{len(parents):,} real parents x {args.copies} copies = {n:,} copies")

    started = time.perf_counter()
    reference = plain_python(parents, args.copies, ranges)
    python_seconds = time.perf_counter() - started
    print(f"(a) plain Python, 1 process:   {n / python_seconds:8.1f} copies/s ({python_seconds:.1f} s)")

    from pyspark.sql import functions as F

    from lookbook.config import SparkSettings, TensorflowSettings
    from lookbook.session import build_spark

    cores = os.cpu_count()
    spark = build_spark(SparkSettings(master=f"local[{cores}]", driver_memory="4g",
                                      conf={"spark.ui.enabled": "false"}), TensorflowSettings())
    frame = spark.createDataFrame(parents, "product_id long, image binary").withColumn(
        "copies", F.lit(args.copies)).persist()
    frame.count()
    timings = []
    for run in ("cold", "warm"):
        started = time.perf_counter()
        # Every column computed, nothing kept: what the step pays before its write.
        make_copies(frame, 0, ranges, cores).write.format("noop").mode("overwrite").save()
        timings.append(time.perf_counter() - started)
        print(f"(b) Spark make_copies, {run}:   {n / timings[-1]:8.1f} copies/s "
              f"({timings[-1]:.1f} s, local[{cores}])")
    made = make_copies(frame, 0, ranges, cores).select("image_key", "image").collect()
    same = {r["image_key"]: bytes(r["image"]) for r in made} == reference
    print(f"ratio b/a: cold {python_seconds / timings[0]:.2f}, warm {python_seconds / timings[1]:.2f}"
          f"; the same bytes in both: {same}")
    spark.stop()
    if not same:
        sys.exit("Spark's copies differ from plain Python's")


if __name__ == "__main__":
    main()
