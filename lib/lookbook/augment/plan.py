"""Which parents need copies made on this run, and whose copies leave the table.

A parent's copies are kept while it is still a train product of a class that gets copies,
with the same image, labels and augmentation settings; otherwise they are made again (or
removed). So a nightly refresh makes copies of new and changed train products only, and two
runs with the same settings commit nothing the second time.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..models.split import split_column

LABEL_COLUMNS = ("gender", "master_category", "sub_category", "article_type")


def train_parents(products: DataFrame, label: str, train: float, validation: float,
                  salt: str) -> DataFrame:
    """The products of the classifier's train part that have a class: the only ones that may
    be copied (a copy of a validation or test product would leak into the evaluation)."""
    return (products.where(split_column("product_id", train, validation, salt) == "train")
            .where(F.col(label).isNotNull()))


def plan_copies(candidates: DataFrame, existing: DataFrame | None, settings: str,
                changed: DataFrame | None = None) -> tuple[DataFrame, DataFrame | None]:
    """(parents to copy now, parent ids whose existing copies leave the table).

    `candidates`: the train products of every class that gets copies, with product_id,
    sha256, the label columns and `copies` (>= 0). `existing`: the augmented table (latest
    version), or None. `changed`: product ids new or changed since the table was made from
    the catalogue, or None to copy every candidate that has none. A candidate with copies
    that are still right (same image, labels and settings) keeps them whatever its count is
    today, and one whose count was 0 gets copies only when it is new or changed: a class
    growing by one product moves its rate a little, and the old products stay as they were."""
    wanted = candidates.where(F.col("copies") > 0)
    if changed is not None:
        wanted = wanted.join(changed, "product_id", "left_semi")
    if existing is None:
        return wanted, None
    groups = existing.select("parent_id", "parent_sha256", "settings", *LABEL_COLUMNS).distinct()
    same = (F.col("c.product_id") == F.col("e.parent_id")) \
        & (F.col("c.sha256") == F.col("e.parent_sha256")) \
        & (F.col("e.settings") == F.lit(settings))
    for column in LABEL_COLUMNS:
        same = same & F.col(f"c.{column}").eqNullSafe(F.col(f"e.{column}"))
    kept = candidates.alias("c").join(groups.alias("e"), same, "left_semi").select("product_id")
    todo = wanted.join(kept, "product_id", "left_anti")
    leaving = (existing.select("parent_id").distinct()
               .join(kept.withColumnRenamed("product_id", "parent_id"), "parent_id", "left_anti"))
    return todo, leaving
