"""What changed between two versions of a table, by key: the one diff that the incremental
steps (ingest, predict, neighbours) compute their work from."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def changes_by_key(before: DataFrame, after: DataFrame, kinds: dict[str, list[str]],
                   key: str = "product_id") -> DataFrame:
    """(key, change) for every key that is `new` (only in `after`), `deleted` (only in
    `before`), or changed: the first of `kinds` (name -> columns) whose columns differ,
    nulls equal to nulls. Keys that are the same in both are left out."""
    columns = list(dict.fromkeys(c for cs in kinds.values() for c in cs))
    old = before.select(key, *[F.col(c).alias(f"o_{c}") for c in columns],
                        F.lit(True).alias("_before"))
    new = after.select(key, *[F.col(c).alias(f"n_{c}") for c in columns],
                       F.lit(True).alias("_after"))
    change = (F.when(F.col("_before").isNull(), F.lit("new"))
              .when(F.col("_after").isNull(), F.lit("deleted")))
    for kind, cs in kinds.items():
        differs = F.lit(False)
        for c in cs:
            differs = differs | ~F.col(f"o_{c}").eqNullSafe(F.col(f"n_{c}"))
        change = change.when(differs, F.lit(kind))
    return (old.join(new, key, "full_outer").select(key, change.alias("change"))
            .where(F.col("change").isNotNull()))
