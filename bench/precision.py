"""bf16 against fp32 features, end to end, on one warehouse (the real catalogue ingested):

  1. featurize in each precision (the features table keeps both: precision is a setting);
  2. per precision and training seed: train the head, evaluate on the test part (accuracy,
     macro-F1 over classes with >= 20 test products);
  3. per precision: the exact top-5 neighbours, their P@5 (articleType; articleType +
     baseColour + usage), and the share of products whose top-5 list (ids, in order) is the
     same in both.

Prints the CPU first (bf16 is emulated where it has no native bf16: slow, but the same
arithmetic: bf16 inputs, fp32 accumulation), featurize seconds per precision, and a table.

    .venv/bin/python bench/precision.py --warehouse /tmp/prec --data ../shared/data/fashion \
        [key=value ...] --seeds 0 1 2

(config overrides before --seeds; `ingest.sample_fraction=0.25` for a deterministic quarter.)
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import numpy as np  # noqa: E402
from machine import cpu_line  # noqa: E402  (bench/machine.py)

from lookbook.cli import configure_logging, parse_job_args  # noqa: E402
from lookbook.io.catalog import Catalog  # noqa: E402
from lookbook.pipelines.catalogue_steps import ingest  # noqa: E402
from lookbook.pipelines.classifier_steps import evaluate, train  # noqa: E402
from lookbook.pipelines.feature_steps import featurize  # noqa: E402
from lookbook.pipelines.neighbour_steps import evaluate_neighbours, neighbours  # noqa: E402
from lookbook.session import build_spark  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def top5_lists(spark, cfg) -> dict[int, tuple[int, ...]]:
    table = Catalog(spark, cfg.warehouse).read("neighbours").select(
        "product_id", "rank", "neighbour_id").toPandas().sort_values(["product_id", "rank"])
    return {pid: tuple(g["neighbour_id"]) for pid, g in table.groupby("product_id")}


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    configure_logging()

    def config(precision: str, seed: int = 0):
        return parse_job_args("pipeline", [f"data_dir={args.data}", f"warehouse={args.warehouse}",
                                           f"featurize.precision={precision}",
                                           f"train.seed={seed}", *args.overrides])

    cfg = config("fp32")
    spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
    rows, lists, seconds = [], {}, {}
    try:
        if not Catalog(spark, cfg.warehouse).exists("products"):
            ingest(spark, cfg)
        for precision in PRECISIONS:
            started = time.time()
            done = featurize(spark, config(precision))
            seconds[precision] = time.time() - started
            print(f"featurize {precision}: {seconds[precision]:.0f} s ({done.summary})", flush=True)
            for seed in args.seeds:
                train(spark, config(precision, seed))
                result = evaluate(spark, config(precision, seed))
                rows.append((precision, seed, result.metrics["test_accuracy"],
                             result.metrics.get("test_macro_f1_support_ge_20", float("nan"))))
                print(f"{precision} seed {seed}: accuracy {rows[-1][2]:.4f}, "
                      f"macro-F1 (>=20) {rows[-1][3]:.4f}", flush=True)
            shutil.rmtree(Path(cfg.warehouse) / "neighbours", ignore_errors=True)
            neighbours(spark, config(precision))
            relevance = evaluate_neighbours(spark, config(precision)).metrics
            lists[precision] = (top5_lists(spark, cfg),
                                relevance["precision@5.articleType"],
                                relevance["precision@5.articleType+baseColour+usage"])
    finally:
        spark.stop()

    print(f"\n{cpu_line()}\n")
    print("| precision | featurize s | test accuracy (mean ± sd) | macro-F1 >= 20 | P@5 articleType "
          "| P@5 + colour + usage |")
    print("|---|---:|---:|---:|---:|---:|")
    for precision in PRECISIONS:
        acc = np.array([r[2] for r in rows if r[0] == precision])
        f1 = np.array([r[3] for r in rows if r[0] == precision])
        _, p5, p5_strict = lists[precision]
        print(f"| {precision} | {seconds[precision]:,.0f} | {acc.mean():.4f} ± {acc.std():.4f} | "
              f"{f1.mean():.4f} ± {f1.std():.4f} | {p5:.4f} | {p5_strict:.4f} |")
    fp32, bf16 = lists["fp32"][0], lists["bf16"][0]
    same = sum(fp32[p] == bf16.get(p) for p in fp32) / len(fp32)
    same_set = sum(set(fp32[p]) == set(bf16.get(p, ())) for p in fp32) / len(fp32)
    print(f"\ntop-5 lists identical (ids in order) bf16 vs fp32: {same:.2%}; same set: "
          f"{same_set:.2%} of {len(fp32):,} products; seeds {args.seeds}")


if __name__ == "__main__":
    main()
