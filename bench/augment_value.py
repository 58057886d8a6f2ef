"""Does augmentation help? On a warehouse holding the real catalogue's products and features:
for each seed, train the same head on the same split without copies and with the copies of
each variant (augment and featurize run first for the variant), and evaluate every model on
the same test part (the `train` and `evaluate` steps themselves). Prints accuracy, macro-F1
over classes with >= 20 test products, and every class's recall with its test support, as
mean ± standard deviation over the seeds.

    .venv/bin/python bench/augment_value.py --warehouse /tmp/realwh --seeds 0 1 2 \
        --variant default= --variant strong=augment.target_per_class=5000,augment.max_factor=10
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_line, real_data_args  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from lookbook.config import load_config  # noqa: E402
from lookbook.pipelines import STEPS  # noqa: E402
from lookbook.session import build_spark  # noqa: E402

MIN_SUPPORT = 20
F1_KEY = f"macro_f1_support_ge_{MIN_SUPPORT}"


def make_copies(spark, overrides: list[str]) -> None:
    cfg = load_config(None, overrides)
    for step in ("augment", "featurize"):
        started = time.time()
        result = STEPS[step](spark, cfg)
        print(f"{step}: {result.summary} ({time.time() - started:.0f} s)\n{result.details}",
              flush=True)


def train_and_evaluate(spark, overrides: list[str]) -> dict:
    trained = STEPS["train"](spark, load_config(None, overrides))
    model = trained.params["model"]
    cfg = load_config(None, [*overrides, f"model.run_id={model}"])
    STEPS["evaluate"](spark, cfg)
    metrics = json.loads((Path(cfg.models_dir) / model / "evaluation" / "metrics.json").read_text())
    metrics["train_copies"] = trained.metrics["examples.train_copies"]
    metrics["best_epoch"] = trained.metrics["best_epoch"]
    return metrics


def summary(results: dict[str, list[dict]]) -> str:
    def cell(runs: list[dict], value) -> str:
        values = [value(m) for m in runs]
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    names = list(results)
    rows = [("train copies", lambda runs: f"{runs[0]['train_copies']:,}"),
            ("accuracy", lambda runs: cell(runs, lambda m: m["accuracy"])),
            (f"macro-F1, classes with >= {MIN_SUPPORT} test products",
             lambda runs: cell(runs, lambda m: m[F1_KEY]))]
    for i, row in enumerate(results[names[0]][0]["per_class"]):
        rows.append((f"recall {row['class']} (test support {row['support']})",
                     lambda runs, i=i: cell(runs, lambda m: m["per_class"][i]["recall"])))
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| {label} | " + " | ".join(fn(results[n]) for n in names) + " |"
              for label, fn in rows]
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    return name, [o for o in overrides.split(",") if o]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", required=True)
    real_data_args(parser, n=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=key=value,key=value: augment settings to compare (default: "
                             "the config's, as 'with copies')")
    parser.add_argument("--out", help="also write the table and every run's metrics (JSON) here")
    args = parser.parse_args()
    print(cpu_line())
    base = [f"warehouse={args.warehouse}", f"data_dir={args.data_dir}", "tracking.enabled=false"]
    variants = {"without copies": None,
                **dict(parse_variant(v) for v in args.variant or ["with copies="])}
    cfg = load_config(None, base)
    spark = build_spark(cfg.spark, cfg.tensorflow)
    results: dict[str, list[dict]] = {}
    for name, overrides in variants.items():
        run_overrides = [*base, "augment.enabled=false"] if overrides is None \
            else [*base, "augment.enabled=true", *overrides]
        if overrides is not None:
            make_copies(spark, run_overrides)
        for seed in args.seeds:
            started = time.time()
            metrics = train_and_evaluate(spark, [*run_overrides, f"train.seed={seed}"])
            results.setdefault(name, []).append(metrics)
            print(f"{name}, seed {seed}: accuracy {metrics['accuracy']:.4f}, macro-F1 "
                  f"(>= {MIN_SUPPORT}) {metrics[F1_KEY]:.4f}, {metrics['train_copies']:,} "
                  f"copies, best epoch {metrics['best_epoch']} ({time.time() - started:.0f} s)",
                  flush=True)
    table = summary(results)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"table": table, "variants": variants,
                                              "runs": results}, indent=1))
    spark.stop()


if __name__ == "__main__":
    main()
