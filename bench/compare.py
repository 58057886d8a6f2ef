"""The compare job's table with each row against the first (the baseline): featurize speed as
a ratio, accuracy, P@5 and photo scores as differences, all from one comparison run.

    .venv/bin/python bench/compare.py --warehouse W [--run RUN_ID ...] [key=value ...]

Without --run it runs `./spark-submit.sh compare warehouse=W data_dir=<real catalogue>
key=value ...` first (e.g. backbones=vgg16,efficientnetlite0 sizes=80x60,160x120), then
reads the table of the newest compare run from W's MLflow store; --run names others (several:
one table of all their rows, in the order given).
Prints the CPU first, the table as Markdown, then the differences.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from machine import cpu_line, real_data_args  # noqa: E402  (bench/machine.py)

from lookbook.compare.table import comparison_table, markdown  # noqa: E402

COMPARED = ["test accuracy", "macro-F1 (>= 20 test)", "P@5 articleType",
            "P@5 articleType+colour+usage", "photo rank 1", "shopper rank 1"]


def newest_compare_run(store: str) -> str:
    runs = mlflow.search_runs(experiment_names=["lookbook"], search_all_experiments=True,
                              filter_string="tags.`lookbook.step` = 'compare'",
                              order_by=["start_time DESC"], max_results=1)
    if runs.empty:
        sys.exit(f"no compare run in {store}")
    return runs["run_id"].iloc[0]


def against_baseline(table: pd.DataFrame) -> pd.DataFrame:
    """Each done row against the first done row: speed x, metrics +/-."""
    done = table[table["status"] == "done"].reset_index(drop=True)
    base = done.iloc[0]
    out = done[["backbone", "weights", "size", "precision"]].copy()
    out["featurize speed x"] = (done["featurize images/s"] / base["featurize images/s"]).round(2)
    for column in COMPARED:
        out[f"{column} +/-"] = (done[column] - base[column]).round(4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--run", nargs="+", help="compare run ids (default: run one now)")
    real_data_args(parser, n=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    if not args.run:
        subprocess.run([str(REPO / "spark-submit.sh"), "compare", f"warehouse={args.warehouse}",
                        f"data_dir={args.data_dir}", *args.overrides], check=True)
    store = f"sqlite:///{Path(args.warehouse).resolve() / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    parents = args.run or [newest_compare_run(store)]
    table = pd.concat([comparison_table(mlflow.search_runs(
        experiment_names=["lookbook"], filter_string=f"tags.`lookbook.compare` = '{parent}'"))
        for parent in parents], ignore_index=True)
    print(f"compare runs {', '.join(parents)}\n\n{markdown(table)}")
    print("Against the first row:\n")
    print(against_baseline(table).to_string(index=False))


if __name__ == "__main__":
    main()
