"""The comparison table, read back from the MLflow runs of a `compare` job (one nested run
per combination), never from a bookkeeping of its own; written as CSV, Markdown and a chart."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..metric_names import metric_name
from ..reports.figures import PLAIN, plt, save_figure
from ..reports.html import write_html
from .photos import ALTERATIONS, SHOPPER

PRECISION_K = 5  # the table's neighbours precision@5


def neighbour_metric(measure: str, relevance: str) -> str:
    """The run metric of a neighbours score, e.g. precision@5 of articleType."""
    return metric_name(f"neighbours.{measure}.{relevance}")


# Table column -> where the run keeps it ("params." / "metrics." / "tags." + name).
COLUMNS = {
    "backbone": "params.combo.backbone",
    "weights": "params.combo.weights",
    "size": "params.combo.size",
    "precision": "params.features.precision",
    # The pooled layers, pooling and input blur (featurize.layers_label).
    "features": "params.features.layers",
    "weights source": "params.features.weights",
    "dimension": "metrics.dimension",
    "featurize images/s": "metrics.photo.images_per_second",
    "featurize images/s (Spark)": "metrics.featurize.images_per_second",
    "train s": "metrics.train.train_seconds",
    "test accuracy": "metrics.evaluate.test_accuracy",
    "macro-F1 (>= 20 test)": "metrics.evaluate.test_macro_f1_support_ge_20",
    "P@5 articleType": "metrics." + neighbour_metric(f"precision@{PRECISION_K}", "articleType"),
    "P@5 articleType+colour+usage":
        "metrics." + neighbour_metric(f"precision@{PRECISION_K}", "articleType+baseColour+usage"),
    "shopper rank 1": f"metrics.photo.{SHOPPER}.rank1",
    "shopper top 5": f"metrics.photo.{SHOPPER}.top5",
    "status": "tags.lookbook.compare.status",
}
RECALL_PREFIX = "metrics.evaluate.recall."
PHOTO_PREFIX = "metrics.photo."
SHOWN = ["backbone", "weights", "size", "precision", "features", "dimension", "featurize images/s",
         "train s", "test accuracy", "macro-F1 (>= 20 test)", "P@5 articleType",
         "P@5 articleType+colour+usage", "photo rank 1", "photo top 5", "shopper rank 1",
         "shopper top 5", "status"]


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per combination run (mlflow.search_runs' frame), in the order they ran: the
    COLUMNS, the photo score (each alteration alone, averaged), then recall per class and
    every photo alteration's scores."""
    runs = runs.sort_values("start_time") if "start_time" in runs else runs
    table = pd.DataFrame({name: runs[source].to_numpy() if source in runs else None
                          for name, source in COLUMNS.items()})
    for name, source in COLUMNS.items():
        if source.startswith("metrics."):  # blank where no run has the metric
            table[name] = pd.to_numeric(table[name], errors="coerce")
    extra = sorted(c for c in runs.columns
                   if c.startswith(RECALL_PREFIX) or (c.startswith(PHOTO_PREFIX)
                                                      and c not in COLUMNS.values()))
    # Each alteration alone, averaged (the same photos for each): the headline photo score.
    for name, measure in (("photo rank 1", "rank1"), ("photo top 5", "top5")):
        kinds = [f"metrics.photo.{kind}.{measure}" for kind in ALTERATIONS]
        present = [k for k in kinds if k in runs]
        table[name] = runs[present].mean(axis=1, skipna=False).to_numpy() \
            if len(present) == len(kinds) else np.nan
    table = table[[*COLUMNS][:-1] + ["photo rank 1", "photo top 5", "status"]]
    if "params.combo.precision" in runs:  # a combination that never ran has no features.*
        table["precision"] = table["precision"].fillna(
            pd.Series(runs["params.combo.precision"].to_numpy()))
    for column in extra:
        table[column.removeprefix("metrics.").removeprefix("evaluate.")] = runs[column].to_numpy()
    return table.reset_index(drop=True)


def markdown(table: pd.DataFrame) -> str:
    """The SHOWN columns as a Markdown table (numbers rounded; blanks where a run has none)."""
    shown = table[SHOWN].copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]) or column == "dimension":
            decimals = 0 if column in ("dimension", "train s") else (
                1 if column.startswith("featurize") else 4)
            shown[column] = [fmt(v, decimals) for v in shown[column]]
    shown["status"] = [shorten(s) for s in shown["status"].fillna("")]
    shown = shown.fillna("").astype(str)
    lines = ["| " + " | ".join(shown.columns) + " |",
             "|" + "|".join("---" if c in ("backbone", "weights", "size", "precision", "features", "status")
                            else "---:" for c in shown.columns) + "|"]
    lines += ["| " + " | ".join(v.replace("|", "/") for v in row) + " |"
              for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def shorten(status: str, width: int = 90) -> str:
    """A status for a table cell; the CSV and the run keep it whole."""
    return status if len(status) <= width else status[:width - 1].rstrip() + "…"


def fmt(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{float(value):,.{decimals}f}"


def plot_comparison(table: pd.DataFrame, out_png: str | Path) -> Path:
    """Test accuracy, P@5 and photo rank 1 against featurize speed: a marker and a colour per
    backbone (hollow for random init), each point labelled with its size and precision."""
    done = table.dropna(subset=["test accuracy"])
    panels = [("test accuracy", "test accuracy"), ("P@5 articleType", "neighbours P@5 (articleType)"),
              ("photo rank 1", "altered photo: own product at rank 1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    backbones = sorted(done["backbone"].unique())
    markers = dict(zip(backbones, "osD^vP*X"))
    colours = {b: f"C{i % 10}" for i, b in enumerate(backbones)}
    for ax, (column, title) in zip(axes, panels):
        for row in done.itertuples(index=False):
            row = dict(zip(done.columns, row))
            x, y = row["featurize images/s"], row[column]
            if x is None or y is None or np.isnan(float(x)) or np.isnan(float(y)):
                continue
            random = row["weights"] == "random"
            colour = colours[row["backbone"]]
            ax.scatter([x], [y], marker=markers[row["backbone"]], s=60,
                       facecolors="none" if random else colour, edgecolors=colour,
                       label=f"{row['backbone']}{' random' if random else ''}")
            ax.annotate(f"{row['size']} {row['precision']}", (x, y), fontsize=7,
                        xytext=(4, 3), textcoords="offset points", **PLAIN)
        ax.set_xscale("log")
        ax.set_xlabel("featurize images/s (log)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        axes[0].legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, out_png)


def write_comparison(table: pd.DataFrame, out: Path) -> Path:
    """comparison.csv (every column), comparison.md, comparison.png and index.html."""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown(table))
    chart = plot_comparison(table, out / "comparison.png")
    photo_columns = ["backbone", "weights", "size", "precision",
                     *[c for c in table.columns if c.startswith("photo.")]]
    recall_columns = ["backbone", "weights", "size", "precision",
                      *[c for c in table.columns if c.startswith("recall.")]]
    write_html(out / "index.html", "lookbook: feature models compared", [
        ("Combinations (same split, head and training budget)",
         table.drop(columns=[c for c in table.columns if c.startswith(("photo.", "recall."))])),
        ("Accuracy, neighbours and photo queries against featurize speed", chart),
        ("Shopper-photo queries by alteration (share at rank 1 / in the top 5)",
         table[photo_columns].round(4)),
        ("Recall per class (test part)", table[recall_columns].round(4)),
    ])
    return out
