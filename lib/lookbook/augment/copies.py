"""Which train products get augmented copies, how many, and making them in a pandas UDF.

A class of n train products is raised towards min(target, max_factor * n): its rate is that
over n (1 = no copies). Each parent gets floor(rate - 1) copies, and one more when a hash of
(seed, parent id) falls below the fraction left, so a parent's number of copies depends on
its class's rate and itself alone, never on which other products are there or where they sit.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, fields

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..models.split import hash_fraction_column
from .transforms import CopyParameters, TransformRanges, augment_image, copy_parameters, hash_unit


def class_rates(train_counts: dict[str, int], target: int, max_factor: float) -> dict[str, float]:
    """Per class: (train products + copies) / train products, >= 1."""
    rates = {}
    for name, n in train_counts.items():
        goal = min(target, max_factor * n)
        rates[name] = max(1.0, goal / n) if n else 1.0
    return rates


def copies_of_parent(rate: float, seed: int, parent_id: int) -> int:
    """The pure-Python twin of `copies_column`."""
    extra = rate - 1
    whole = math.floor(extra + 1e-9)
    return whole + int(hash_unit(seed, parent_id, "copies") < extra - whole)


def copies_column(rate: Column, seed: int, parent_id: str) -> Column:
    """Copies per parent (see `copies_of_parent`), as a Spark column."""
    key = F.concat_ws(":", F.lit(str(seed)), F.col(parent_id).cast("string"), F.lit("copies"))
    u = hash_fraction_column(key)  # hash_unit(seed, parent_id, "copies")
    extra = rate - F.lit(1.0)
    whole = F.floor(extra + F.lit(1e-9))
    return (whole + F.when(u < extra - whole, 1).otherwise(0)).cast("int")


def with_copy_counts(parents: DataFrame, label: str, rates: dict[str, float],
                     seed: int) -> DataFrame:
    """`copies` (int) for every parent row, from its class's rate."""
    rate = F.create_map(*[F.lit(x) for pair in rates.items() for x in pair])[F.col(label)]
    return parents.withColumn("copies", copies_column(F.coalesce(rate, F.lit(1.0)), seed,
                                                      "product_id"))


COPY_SCHEMA = T.StructType([
    T.StructField("image", T.BinaryType()),
    *[T.StructField(f.name, T.BooleanType() if f.type == "bool" else T.FloatType())
      for f in fields(CopyParameters)],
    T.StructField("error", T.StringType()),
])


def copy_batch(parent_ids: pd.Series, copy_indexes: pd.Series, images: pd.Series, seed: int,
               ranges: TransformRanges) -> pd.DataFrame:
    """One augmented copy per row; a parent image that fails costs its own rows only."""
    rows = []
    for parent_id, index, data in zip(parent_ids, copy_indexes, images):
        p = copy_parameters(seed, int(parent_id), int(index), ranges)
        try:
            image, error = augment_image(bytes(data), p), None
        except Exception as exc:  # PIL raises many types for bad data
            image, error = None, f"copy failed: {exc}"
        rows.append({"image": image, **asdict(p), "error": error})
    return pd.DataFrame(rows, columns=[f.name for f in COPY_SCHEMA.fields])


def make_copies(parents: DataFrame, seed: int, ranges: TransformRanges,
                partitions: int) -> DataFrame:
    """Parents (product_id, image, copies, ...) -> one row per copy: the parent's columns but
    image and copies, then parent_id, copy_index, image_key, the copy's image and parameters,
    and `error` (null when the copy was made)."""
    @F.pandas_udf(COPY_SCHEMA)
    def make(batches: Iterator[tuple[pd.Series, pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for parent_ids, indexes, images in batches:
            yield copy_batch(parent_ids, indexes, images, seed, ranges)

    exploded = (parents.where(F.col("copies") > 0)
                .withColumn("copy_index", F.explode(F.sequence(F.lit(0), F.col("copies") - 1)))
                .withColumnRenamed("product_id", "parent_id")
                .repartition(partitions))
    made = exploded.withColumn("_copy", make("parent_id", "copy_index", "image"))
    kept = [c for c in exploded.columns if c not in ("image", "copies")]
    return made.select(
        *kept,
        F.concat(F.col("parent_id").cast("string"), F.lit(":aug"),
                 F.col("copy_index").cast("string")).alias("image_key"),
        "_copy.*")
