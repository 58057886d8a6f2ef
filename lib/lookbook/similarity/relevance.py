"""How good the neighbours are, without click labels: relevance from catalogue attributes.

For each relevance definition (same articleType, same subCategory, same masterCategory, same
articleType + baseColour + usage), over every product with at least one relevant other product:
precision@k, recall@k (relevant found / relevant that exist, R = class size - 1) and mAP@k
(AP@k = sum of precision@i at each relevant rank i, over min(k, R)). Each beside what a random
ranking scores: precision Σ share² over classes (the chance that a random other product is
relevant), recall k / (N - 1).

A product alone in its class has no relevant product to find: precision@k, recall@k and AP@k
are undefined for it (recall and AP would divide by R = 0, and its precision would be 0 for
any ranking, good or bad). So it is not a query; it stays a candidate, a non-relevant
neighbour of the others. `singletons` counts such products per definition. A definition
without a single query (every class of one), or a catalogue of one product, reports NaN
rather than a number.
"""
from __future__ import annotations

from functools import reduce

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

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
        # Products alone in their class are not queries (see the module doc).
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
        class_sizes = np.array([r["size"] for r in sizes.collect()], dtype=float)
        rows.append({"relevance": name, "queries": scores["queries"],
                     "singletons": int((class_sizes == 1).sum()),
                     f"precision@{k}": defined(scores["precision"]),
                     f"precision@{k} random": random_precision(class_sizes, n),
                     f"recall@{k}": defined(scores["recall"]),
                     f"recall@{k} random": k / (n - 1) if n > 1 else np.nan,
                     f"mAP@{k}": defined(scores["map"])})
    return pd.DataFrame(rows)


def defined(value) -> float:
    """An average over no queries is NaN, not None, so that tables and formats still work."""
    return np.nan if value is None else float(value)


def random_precision(class_sizes: np.ndarray, n: int) -> float:
    """Σ share² over classes: the chance that a random other product is relevant."""
    return float(((class_sizes / n) ** 2).sum()) if n else np.nan
