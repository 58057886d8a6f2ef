"""Does augmentation help? On a warehouse holding the real catalogue's products and features:
make the copies (augment, featurize), then for each seed train the same head on the same split
with and without them, and evaluate each model on the same test part (the `train` and
`evaluate` steps themselves). Prints accuracy, macro-F1 over classes with >= 20 test products,
and every class's recall with its test support, as mean and spread over the seeds.

    .venv/bin/python bench/augment_value.py --warehouse /tmp/realwh --seeds 0 1 2 \
        [augment.target_per_class=2000 augment.max_factor=5 ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_line  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from lookbook.config import load_config  # noqa: E402
from lookbook.pipelines import STEPS  # noqa: E402
from lookbook.session import build_spark  # noqa: E402

MIN_SUPPORT = 20


def run(spark, base: list[str], seed: int, copies: bool) -> dict:
    overrides = [*base, f"augment.enabled={str(copies).lower()}", f"train.seed={seed}"]
    trained = STEPS["train"](spark, load_config(None, overrides))
    model = trained.params["model"]
    STEPS["evaluate"](spark, load_config(None, [*overrides, f"model.run_id={model}"]))
    warehouse = load_config(None, overrides).models_dir
    metrics = json.loads((Path(warehouse) / model / "evaluation" / "metrics.json").read_text())
    metrics["train_copies"] = trained.metrics["examples.train_copies"]
    metrics["best_epoch"] = trained.metrics["best_epoch"]
    return metrics


def summary(results: dict[bool, list[dict]]) -> str:
    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    key = f"macro_f1_support_ge_{MIN_SUPPORT}"
    first = results[False][0]
    lines = ["| | without copies | with copies |", "| --- | --- | --- |",
             "| train copies | 0 | " + f"{results[True][0]['train_copies']:,} |",
             f"| accuracy | {cell([m['accuracy'] for m in results[False]])} | "
             f"{cell([m['accuracy'] for m in results[True]])} |",
             f"| macro-F1, classes with >= {MIN_SUPPORT} test products | "
             f"{cell([m[key] for m in results[False]])} | {cell([m[key] for m in results[True]])} |"]
    for i, row in enumerate(first["per_class"]):
        recall = {flag: [m["per_class"][i]["recall"] for m in runs] for flag, runs in results.items()}
        lines.append(f"| recall {row['class']} (test support {row['support']}) | "
                     f"{cell(recall[False])} | {cell(recall[True])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared/data/fashion"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", help="also write the table and every run's metrics (JSON) here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. augment.max_factor=3")
    args = parser.parse_args()
    print(cpu_line())
    base = [f"warehouse={args.warehouse}", f"data_dir={args.data_dir}", "tracking.enabled=false",
            *args.overrides]
    cfg = load_config(None, [*base, "augment.enabled=true"])
    spark = build_spark(cfg.spark, cfg.tensorflow)
    for step in ("augment", "featurize"):
        started = time.time()
        result = STEPS[step](spark, cfg)
        print(f"{step}: {result.summary} ({time.time() - started:.0f} s)\n{result.details}",
              flush=True)
    results: dict[bool, list[dict]] = {False: [], True: []}
    for seed in args.seeds:
        for copies in (False, True):
            started = time.time()
            metrics = run(spark, base, seed, copies)
            results[copies].append(metrics)
            print(f"seed {seed}, {'with' if copies else 'without'} copies: accuracy "
                  f"{metrics['accuracy']:.4f}, macro-F1 (>= {MIN_SUPPORT}) "
                  f"{metrics[f'macro_f1_support_ge_{MIN_SUPPORT}']:.4f}, best epoch "
                  f"{metrics['best_epoch']} ({time.time() - started:.0f} s)", flush=True)
    table = summary(results)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"table": table, "overrides": args.overrides,
                                              "runs": {str(k): v for k, v in results.items()}},
                                             indent=1))
    spark.stop()


if __name__ == "__main__":
    main()
