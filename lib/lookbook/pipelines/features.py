"""The featurize step, and the configured feature model that later steps share."""
from __future__ import annotations

import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..features.featurize import (
    FeatureModelSpec,
    featurize_products,
    plan_featurize,
    prepare_model,
    rows_of_settings,
    settings_match,
)
from ..io.catalog import Catalog
from .base import StepResult, catalog, step


def feature_spec(spark: SparkSession, cfg: Config) -> FeatureModelSpec:
    """The configured feature model, its weights resolved and shipped to the executors."""
    f = cfg.featurize
    return prepare_model(spark, f.backbone, f.weights, str(Path(f.weights_cache).expanduser()),
                         f.height, f.width, f.precision, f.batch_size,
                         cfg.tensorflow.intra_op_threads, f.layers)


def spec_params(spec: FeatureModelSpec) -> dict[str, object]:
    return {f"features.{k}": v for k, v in spec.settings().items()}


def current_features(tables: Catalog, spec: FeatureModelSpec, *columns: str) -> DataFrame:
    """Feature rows of `spec` for the products in the catalogue today, with `columns` of
    products joined on."""
    products = tables.read("products").select("product_id", *columns)
    return tables.read("features").filter(settings_match(spec)).join(products, "product_id")


@step("featurize")
def featurize(spark: SparkSession, cfg: Config) -> StepResult:
    tables = catalog(spark, cfg)
    spec = feature_spec(spark, cfg)
    existing = tables.read("features") if tables.exists("features") else None
    products = tables.read("products")
    todo, keep = plan_featurize(products, existing, spec)
    kept = keep.filter(settings_match(spec)).count() if keep is not None else 0
    # Rows of these settings not kept (product gone, image changed, vector unusable) must go
    # even when nothing new is computed.
    n_stale = rows_of_settings(existing, spec).count() - kept if existing is not None else 0
    started = time.time()
    new = featurize_products(todo, spec, cfg.featurize.rows_per_partition).persist()
    n_new = new.count()
    seconds = time.time() - started
    n_failed = new.filter(F.col("error").isNotNull()).count()
    outputs = {}
    if n_new or n_stale:
        meta = {f"lookbook.{k}": str(v) for k, v in spec.settings().items()}
        good = new.filter(F.col("error").isNull()).drop("error")
        features = good if keep is None else keep.unionByName(good)
        detail = " ".join(str(v) for v in spec.settings().values())
        failures = new.filter(F.col("error").isNotNull()).select(
            "product_id", F.lit("featurize").alias("source"), F.col("error").alias("reason"),
            F.lit(detail).alias("detail"))
        if tables.exists("feature_rejects"):  # other settings' rejects stay, as their rows do
            failures = tables.read("feature_rejects").where(
                ~F.col("detail").eqNullSafe(detail)).unionByName(failures)
        outputs = tables.write_together({"features": features, "feature_rejects": failures},
                                        metadata=meta)
    new.unpersist()
    computed = n_new - n_failed
    return StepResult(
        f"{computed:,} computed, {kept:,} already done, {n_failed:,} failed"
        + (f", {n_stale:,} stale dropped" if n_stale else ""),
        details=(f"{spec.backbone} ({spec.layers}) {spec.height}x{spec.width} {spec.precision}, "
                 f"weights: {spec.weights}, preprocessing: {spec.preprocessing}"),
        params=spec_params(spec),
        metrics={"computed": computed, "reused": kept, "failed": n_failed, "stale": n_stale,
                 "images_per_second": n_new / seconds if n_new and seconds else 0.0},
        outputs=outputs)
