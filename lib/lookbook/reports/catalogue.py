"""Pictures of the catalogue: products per class and sample images per class."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ..io.images import to_rgb
from .figures import PLAIN, plt, save_figure


def class_counts(products: DataFrame, column: str = "master_category") -> pd.DataFrame:
    """Products per class, largest first; a missing class shows as '(none)'."""
    counts = (products.groupBy(F.coalesce(F.col(column), F.lit("(none)")).alias("class"))
              .count().toPandas())
    return counts.sort_values(["count", "class"], ascending=[False, True]).reset_index(drop=True)


def sample_per_class(products: DataFrame, per_class: int,
                     column: str = "master_category") -> pd.DataFrame:
    """Up to `per_class` products of each class, the same ones on every run (ordered by a hash
    of the id, so they are spread over the catalogue rather than the first ids)."""
    order = Window.partitionBy(column).orderBy(F.xxhash64("product_id"), "product_id")
    return (products.withColumn("_n", F.row_number().over(order)).filter(F.col("_n") <= per_class)
            .select("product_id", column, "display_name", "image").toPandas())


def plot_class_balance(counts: pd.DataFrame, out_png: str | Path, title: str) -> Path:
    """Bar charts on a linear and a log scale: on a linear axis the smallest classes vanish."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    positions = range(len(counts))
    for ax, log in zip(axes, (False, True)):
        bars = ax.bar(positions, counts["count"], color="#4472c4")
        ax.set_yscale("log" if log else "linear")
        ax.set_title(f"{title} ({'log' if log else 'linear'} scale)", **PLAIN)
        ax.set_ylabel("products")
        ax.set_xticks(positions, [str(c) for c in counts["class"]], rotation=35, ha="right",
                      **PLAIN)
        ax.bar_label(bars, labels=[f"{c:,}" for c in counts["count"]], fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_samples(samples: pd.DataFrame, out_png: str | Path,
                 column: str = "master_category") -> Path:
    """A grid: one row per class, its sample images with their ids."""
    classes = list(samples[column].fillna("(none)").drop_duplicates().sort_values())
    per_row = max(1, samples.groupby(column, dropna=False).size().max())
    fig, axes = plt.subplots(len(classes), per_row, squeeze=False,
                             figsize=(1.3 * per_row + 1.5, 1.9 * len(classes)))
    for ax in axes.flat:
        ax.axis("off")
    for r, cls in enumerate(classes):
        rows = samples[samples[column].fillna("(none)") == cls]
        axes[r][0].set_title(cls, loc="left", fontsize=9, fontweight="bold", **PLAIN)
        for c, (_, item) in enumerate(rows.iterrows()):
            axes[r][c].imshow(to_rgb(bytes(item["image"])))
            axes[r][c].text(0.5, -0.08, str(item["product_id"]), fontsize=7, ha="center",
                            va="top", transform=axes[r][c].transAxes)
    fig.tight_layout()
    return save_figure(fig, out_png)
