"""Near-duplicate products: pairs at least a threshold similar among each one's top k."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def duplicate_pairs(neighbours: DataFrame, products: DataFrame, threshold: float) -> DataFrame:
    """Distinct pairs (product_id < other_id, score: the higher of the two directions) of
    `neighbours` rows scoring at least `threshold`, and whether the two images have the same
    bytes (their sha256 in `products`)."""
    sha = products.select("product_id", "sha256")
    return (neighbours.where(F.col("score") >= threshold)
            .select(F.least("product_id", "neighbour_id").alias("product_id"),
                    F.greatest("product_id", "neighbour_id").alias("other_id"), "score")
            .groupBy("product_id", "other_id").agg(F.max("score").alias("score"))
            .join(sha, "product_id")
            .join(sha.select(F.col("product_id").alias("other_id"),
                             F.col("sha256").alias("other_sha256")), "other_id")
            .select("product_id", "other_id", "score",
                    (F.col("sha256") == F.col("other_sha256")).alias("identical_bytes")))
