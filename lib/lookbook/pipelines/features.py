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
    settings_match,
    with_setting_columns,
)
from ..io.catalog import Catalog, table_spec
from .base import StepResult, catalog, committed, step, written_metrics, written_summary


def feature_spec(spark: SparkSession, cfg: Config) -> FeatureModelSpec:
    """The configured feature model, its weights resolved and shipped to the executors."""
    f = cfg.featurize
    return prepare_model(spark, f.backbone, f.weights, str(Path(f.weights_cache).expanduser()),
                         f.height, f.width, f.precision, f.batch_size,
                         cfg.tensorflow.intra_op_threads, f.layers)


def spec_params(spec: FeatureModelSpec) -> dict[str, object]:
    return {f"features.{k}": v for k, v in spec.settings().items()}


def current_features(tables: Catalog, spec: FeatureModelSpec, *columns: str,
                     versions: dict[str, int] | None = None) -> DataFrame:
    """Feature rows of `spec` for the products in the catalogue (today, or at the `versions`
    of products and features given), with `columns` of products joined on."""
    versions = versions or {}
    products = tables.read("products", versions.get("products")).select("product_id", *columns)
    return (tables.read("features", versions.get("features")).filter(settings_match(spec))
            .join(products, "product_id"))


@step("featurize")
def featurize(spark: SparkSession, cfg: Config) -> StepResult:
    """Features for every product that has none with these settings for its current image;
    rows of gone products and changed images leave. Only files holding changed rows are
    rewritten."""
    tables = catalog(spark, cfg)
    spec = feature_spec(spark, cfg)
    existing = tables.read_latest("features") if tables.exists("features") else None
    products = tables.read("products")
    todo, keep = plan_featurize(products, existing, spec)
    kept = keep.filter(settings_match(spec)).count() if keep is not None else 0
    keys = list(table_spec("features").keys)
    stale = (with_setting_columns(existing).select(*keys).exceptAll(keep.select(*keys)).persist()
             if existing is not None else None)
    n_stale = stale.count() if stale is not None else 0
    started = time.time()
    new = featurize_products(todo, spec, cfg.featurize.rows_per_partition).persist()
    n_new = new.count()
    seconds = time.time() - started
    n_failed = new.filter(F.col("error").isNotNull()).count()
    detail = " ".join(str(v) for v in spec.settings().values())
    failures = new.filter(F.col("error").isNotNull()).select(
        "product_id", F.lit("featurize").alias("source"), F.col("error").alias("reason"),
        F.lit(detail).alias("detail"))
    good = new.filter(F.col("error").isNull()).drop("error")
    meta = {f"lookbook.{k}": str(v) for k, v in spec.settings().items()}
    if existing is None or not tables.exists("feature_rejects"):
        outputs = tables.write_together({"features": good, "feature_rejects": failures},
                                        metadata=meta)
    else:
        # Failures are tried again on every run: this settings' rejects become today's, other
        # settings' stay.
        rejects = tables.read_latest("feature_rejects").where(
            ~F.col("detail").eqNullSafe(detail)).unionByName(failures)
        written = tables.merge_together({
            "features": (good, stale, None),
            "feature_rejects": tables.differences("feature_rejects", rejects)}, metadata=meta)
        outputs = committed(written)
    new.unpersist()
    if stale is not None:
        stale.unpersist()
    computed = n_new - n_failed
    return StepResult(
        f"{computed:,} computed, {kept:,} already done, {n_failed:,} failed"
        + (f", {n_stale:,} stale dropped" if n_stale else "")
        + ("" if outputs else "; nothing committed"),
        details=(f"{spec.backbone} ({spec.layers}) {spec.height}x{spec.width} {spec.precision}, "
                 f"weights: {spec.weights}, preprocessing: {spec.preprocessing}\n"
                 + written_summary(tables.written)),
        params=spec_params(spec),
        metrics={"computed": computed, "reused": kept, "failed": n_failed, "stale": n_stale,
                 "images_per_second": n_new / seconds if n_new and seconds else 0.0,
                 **written_metrics(tables.written)},
        outputs=outputs)

