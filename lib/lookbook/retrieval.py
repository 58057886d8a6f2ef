"""How good the neighbours are, without click labels: relevance from catalogue attributes.

For each relevance definition (same articleType, same subCategory, same masterCategory, same
articleType + baseColour + usage), over every product with at least one relevant other product:
precision@k, recall@k (relevant found / relevant that exist, R = class size - 1) and mAP@k
(AP@k = sum of precision@i at each relevant rank i, over min(k, R)). Each beside what a random
ranking scores: precision Σ share² over classes (the chance that a random other product is
relevant), recall k / (N - 1).
"""
from __future__ import annotations

from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from .images import to_rgb
from .report import _save, plt

RELEVANCE = {
    "articleType": ["article_type"],
    "subCategory": ["sub_category"],
    "masterCategory": ["master_category"],
    "articleType+baseColour+usage": ["article_type", "base_colour", "usage"],
}


def relevance_metrics(neighbours: DataFrame, products: DataFrame, k: int,
                      relevance: dict[str, list[str]] = RELEVANCE) -> pd.DataFrame:
    """One row per relevance definition: precision@k, recall@k, mAP@k and random baselines.
    `neighbours` has product_id, rank, neighbour_id; `products` the attribute columns."""
    rows = []
    n = products.count()
    for name, columns in relevance.items():
        # A product whose attribute is missing has no class: it is neither query nor relevant.
        complete = reduce(lambda a, b: a & b, [F.col(c).isNotNull() for c in columns])
        keyed = products.where(complete).select(
            "product_id", F.concat_ws("\u241f", *columns).alias("key"))
        sizes = keyed.groupBy("key").agg(F.count("*").alias("size"))
        queries = keyed.join(sizes, "key").where(F.col("size") > 1)
        marked = (neighbours.where(F.col("rank") <= k)
                  .join(queries.select("product_id", "key", (F.col("size") - 1).alias("relevant")),
                        "product_id")
                  .join(keyed.select(F.col("product_id").alias("neighbour_id"),
                                     F.col("key").alias("neighbour_key")), "neighbour_id", "left")
                  .withColumn("rel", (F.col("key") == F.col("neighbour_key")).cast("int")))
        marked = marked.fillna({"rel": 0})
        cumulative = Window.partitionBy("product_id").orderBy("rank").rowsBetween(
            Window.unboundedPreceding, Window.currentRow)
        marked = marked.withColumn("precision_at_rank", F.sum("rel").over(cumulative) / F.col("rank"))
        per_query = marked.groupBy("product_id", "relevant").agg(
            F.sum("rel").alias("hits"),
            F.sum(F.col("precision_at_rank") * F.col("rel")).alias("ap_sum"))
        scores = per_query.select(
            F.avg(F.col("hits") / k).alias("precision"),
            F.avg(F.col("hits") / F.col("relevant")).alias("recall"),
            F.avg(F.col("ap_sum") / F.least(F.lit(k), F.col("relevant"))).alias("map"),
            F.count("*").alias("queries")).first()
        shares = np.array([r["size"] for r in sizes.collect()], dtype=float) / n
        rows.append({"relevance": name, "queries": scores["queries"],
                     f"precision@{k}": scores["precision"],
                     f"precision@{k} random": float((shares ** 2).sum()),
                     f"recall@{k}": scores["recall"], f"recall@{k} random": k / (n - 1),
                     f"mAP@{k}": scores["map"]})
    return pd.DataFrame(rows)


def gallery_queries(neighbours: DataFrame, products: DataFrame, per_class: int,
                    extremes: int = 3, column: str = "master_category") -> pd.DataFrame:
    """Which products to show: `per_class` of every class (the same ones on every run), and
    the `extremes` best and worst by their mean neighbour score. Columns product_id, why."""
    mean = neighbours.groupBy("product_id").agg(F.avg("score").alias("mean_score"))
    order = Window.partitionBy(column).orderBy(F.xxhash64("product_id"), "product_id")
    sample = (products.select("product_id", column).withColumn("_n", F.row_number().over(order))
              .where(F.col("_n") <= per_class)
              .select("product_id", F.concat(F.lit("sample: "), F.col(column)).alias("why")))
    best = mean.orderBy(F.desc("mean_score"), "product_id").limit(extremes).select(
        "product_id", F.lit("best mean score").alias("why"))
    worst = mean.orderBy("mean_score", "product_id").limit(extremes).select(
        "product_id", F.lit("worst mean score").alias("why"))
    return sample.unionByName(best).unionByName(worst).toPandas()


def plot_gallery(rows: list[dict], out_png: str | Path) -> Path:
    """One row per query: the query image, then its neighbours with id, name and score.
    Each dict: title, image (bytes), neighbours: list of (id, name, score, image bytes)."""
    k = max([len(r["neighbours"]) for r in rows] + [1])
    fig, axes = plt.subplots(len(rows) or 1, k + 1, squeeze=False,
                             figsize=(1.75 * (k + 1), 2.35 * max(1, len(rows))))
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        axes[r][0].imshow(to_rgb(row["image"]))
        axes[r][0].set_title(row["title"], fontsize=6.5, fontweight="bold")
        for c, (pid, name, score, image) in enumerate(row["neighbours"], 1):
            axes[r][c].imshow(to_rgb(image))
            axes[r][c].set_title(f"{pid} {score:.3f}\n{shorten(name)}", fontsize=6)
    fig.tight_layout()
    return _save(fig, out_png)


def shorten(text: str | None, width: int = 24) -> str:
    text = text or ""
    return text if len(text) <= width else text[:width - 1] + "…"


def gallery_rows(queries: pd.DataFrame, neighbours: DataFrame, products: DataFrame) -> list[dict]:
    """Gallery rows for `queries` (product_id, why): images and names from `products`."""
    ids = [int(i) for i in queries["product_id"]]
    lists = neighbours.where(F.col("product_id").isin(ids)).toPandas()
    needed = set(ids) | set(int(i) for i in lists["neighbour_id"])
    info = (products.where(F.col("product_id").isin(list(needed)))
            .select("product_id", "display_name", "article_type", "image").toPandas()
            .set_index("product_id"))
    rows = []
    for _, query in queries.iterrows():
        pid = int(query["product_id"])
        mine = lists[lists["product_id"] == pid].sort_values("rank")
        rows.append({
            "title": f"{query['why']}\n{pid} {shorten(info.loc[pid, 'article_type'], 18)}",
            "image": bytes(info.loc[pid, "image"]),
            "neighbours": [(int(n), info.loc[n, "display_name"], float(s), bytes(info.loc[n, "image"]))
                           for n, s in zip(mine["neighbour_id"], mine["score"])],
        })
    return rows
