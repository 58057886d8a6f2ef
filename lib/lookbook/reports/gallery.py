"""Galleries of products with their neighbours: which products to show, and the picture."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ..io.images import to_rgb
from .figures import PLAIN, plt, save_figure


def gallery_queries(neighbours: DataFrame, products: DataFrame, per_class: int,
                    extremes: int = 3, column: str = "master_category") -> pd.DataFrame:
    """Which products to show: `per_class` of every class (the same ones on every run), and
    the `extremes` best and worst by their mean neighbour score. Columns product_id, why.
    Only products in `products` are chosen, even when the neighbours table is older."""
    mean = (neighbours.join(products.select("product_id"), "product_id", "left_semi")
            .groupBy("product_id").agg(F.avg("score").alias("mean_score")))
    order = Window.partitionBy(column).orderBy(F.xxhash64("product_id"), "product_id")
    sample = (products.select("product_id", column).withColumn("_n", F.row_number().over(order))
              .where(F.col("_n") <= per_class)
              .select("product_id", F.concat(F.lit("sample: "), F.col(column)).alias("why")))
    best = mean.orderBy(F.desc("mean_score"), "product_id").limit(extremes).select(
        "product_id", F.lit("best mean score").alias("why"))
    worst = mean.orderBy("mean_score", "product_id").limit(extremes).select(
        "product_id", F.lit("worst mean score").alias("why"))
    return sample.unionByName(best).unionByName(worst).toPandas()


def gallery_row(title: str, image: bytes, neighbours: list[tuple]) -> dict:
    """A row of `plot_gallery`: neighbours is a list of (id, name, score, image bytes)."""
    return {"title": title, "image": image, "neighbours": neighbours}


def plot_gallery(rows: list[dict], out_png: str | Path) -> Path:
    """One row per query: the query image, then its neighbours with id, name and score
    (rows made by `gallery_row`)."""
    k = max([len(r["neighbours"]) for r in rows] + [1])
    fig, axes = plt.subplots(len(rows) or 1, k + 1, squeeze=False,
                             figsize=(1.75 * (k + 1), 2.35 * max(1, len(rows))))
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        axes[r][0].imshow(to_rgb(row["image"]))
        axes[r][0].set_title(row["title"], fontsize=6.5, fontweight="bold", **PLAIN)
        for c, (pid, name, score, image) in enumerate(row["neighbours"], 1):
            axes[r][c].imshow(to_rgb(image))
            axes[r][c].set_title(f"{pid} {score:.3f}\n{shorten(name)}", fontsize=6, **PLAIN)
    fig.tight_layout()
    return save_figure(fig, out_png)


def shorten(text: str | None, width: int = 24) -> str:
    text = text or ""
    return text if len(text) <= width else text[:width - 1] + "…"


def gallery_rows(queries: pd.DataFrame, neighbours: DataFrame, products: DataFrame) -> list[dict]:
    """Gallery rows for `queries` (product_id, why): images and names from `products`.
    A neighbours table older than `products` may name products that are gone: a query that
    is gone has no row, a neighbour that is gone is left out and its query's title says so."""
    ids = [int(i) for i in queries["product_id"]]
    lists = neighbours.where(F.col("product_id").isin(ids)).toPandas()
    needed = set(ids) | set(int(i) for i in lists["neighbour_id"])
    info = (products.where(F.col("product_id").isin(list(needed)))
            .select("product_id", "display_name", "article_type", "image").toPandas()
            .set_index("product_id"))
    rows = []
    for _, query in queries.iterrows():
        pid = int(query["product_id"])
        if pid not in info.index:
            continue
        mine = lists[lists["product_id"] == pid].sort_values("rank")
        found = [(int(n), float(s)) for n, s in zip(mine["neighbour_id"], mine["score"])
                 if n in info.index]
        gone = len(mine) - len(found)
        rows.append(gallery_row(
            f"{query['why']}\n{pid} {shorten(info.loc[pid, 'article_type'], 18)}"
            + (f"\n({gone} gone from products)" if gone else ""),
            bytes(info.loc[pid, "image"]),
            [(n, info.loc[n, "display_name"], s, bytes(info.loc[n, "image"])) for n, s in found]))
    return rows
