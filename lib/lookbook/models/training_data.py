"""What the classifier's head trains on: products' feature vectors with their label and part,
and the augmented copies' (train part only)."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..features.featurize import FeatureModelSpec, settings_match
from .classifier import with_label_index, with_split


def training_data(products: DataFrame, features: DataFrame, spec: FeatureModelSpec, label: str,
                  labels: list[str], *, train: float, validation: float, salt: str,
                  copies: DataFrame | None = None, copy_features: DataFrame | None = None
                  ) -> DataFrame:
    """product_id, `label`, split, label (index into `labels`), embedding, copy: the products
    with features of `spec`, and when `copies` (the augmented table) and `copy_features` are
    given, the copies' features (train part only). `train`, `validation`, `salt`: the split."""
    labelled = with_label_index(
        with_split(products.select("product_id", label), train, validation, salt), label, labels)
    vectors = features.filter(settings_match(spec)).select("product_id", "embedding")
    data = labelled.join(vectors, "product_id").withColumn("copy", F.lit(False))
    if copies is None or copy_features is None:
        return data
    # A copy counts while its parent is a train product with the image it was made from;
    # its class is the parent's today.
    parents = products.select("product_id", F.col("sha256").alias("parent_sha256"), label)
    kept = (copies.select("image_key", F.col("parent_id").alias("product_id"), "parent_sha256")
            .join(parents, ["product_id", "parent_sha256"]))
    copy_vectors = copy_features.filter(settings_match(spec)).select("image_key", "embedding")
    kept = with_label_index(with_split(kept, train, validation, salt), label, labels) \
        .where(F.col("split") == "train")
    return data.unionByName(kept.join(copy_vectors, "image_key").select(
        "product_id", label, "split", "label", "embedding", F.lit(True).alias("copy")))
