"""The featurize step, and the configured feature model that later steps share."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config, FeaturizeSettings
from ..features.backbones import feature_layers
from ..features.featurize import (
    FeatureModelSpec,
    featurize_products,
    layers_label,
    plan_featurize,
    prepare_model,
    settings_match,
)
from ..io.catalog import (
    AUGMENTED,
    AUGMENTED_FEATURES,
    FEATURE_REJECTS,
    FEATURES,
    PRODUCTS,
    Catalog,
    Table,
    table_spec,
)
from .base import StepResult, catalog, committed, step, written_metrics, written_summary


def feature_spec(spark: SparkSession, cfg: Config) -> FeatureModelSpec:
    """The configured feature model, its weights resolved and shipped to the executors."""
    f = cfg.featurize
    return prepare_model(spark, f.backbone, f.weights, str(Path(f.weights_cache).expanduser()),
                         f.height, f.width, f.precision, f.batch_size,
                         cfg.tensorflow.intra_op_threads, f.layers, f.pooling, f.blur)


def configured_layers_label(f: FeaturizeSettings) -> str:
    """The `layers` column of the features rows `f` makes (featurize.layers_label)."""
    return layers_label(feature_layers(f.backbone, f.layers), f.pooling, f.blur)


def spec_params(spec: FeatureModelSpec) -> dict[str, object]:
    """Run params: the settings of the feature rows a step made or used."""
    return {f"{FEATURES}.{k}": v for k, v in spec.settings().items()}


def current_features(tables: Catalog, spec: FeatureModelSpec, *columns: str,
                     versions: dict[Table, int] | None = None) -> DataFrame:
    """Feature rows of `spec` for the products in the catalogue (today, or at the `versions`
    of products and features given), with `columns` of products joined on."""
    versions = versions or {}
    products = tables.read(PRODUCTS, versions.get(PRODUCTS)).select("product_id", *columns)
    return (tables.read(FEATURES, versions.get(FEATURES)).filter(settings_match(spec))
            .join(products, "product_id"))


@dataclass
class FeaturizePlan:
    """What featurize does to one features table: images to compute, rows that leave (keys;
    `release` when done), how many rows of these settings are reused."""
    todo: DataFrame
    stale: DataFrame | None
    kept: int
    n_stale: int
    status: DataFrame | None = None  # persisted: what becomes of each existing row

    def release(self) -> None:
        if self.status is not None:
            self.status.unpersist()


def plan_table(tables: Catalog, name: Table, images: DataFrame, spec: FeatureModelSpec,
               key: str) -> FeaturizePlan:
    existing = tables.read_latest(name) if tables.exists(name) else None
    todo, status = plan_featurize(images, existing, spec, key)
    if status is None:
        return FeaturizePlan(todo, None, 0, 0)
    status = status.persist()
    counts = status.agg(F.count_if("reuse").alias("kept"),
                        F.count_if(~F.col("keep")).alias("stale")).first()
    stale = status.where(~F.col("keep")).select(*table_spec(name).keys)
    return FeaturizePlan(todo, stale, counts["kept"], counts["stale"], status)


def featurize_copies(tables: Catalog, spec: FeatureModelSpec, rows_per_partition: int,
                     meta: dict[str, str]) -> tuple[DataFrame, DataFrame, dict[str, int]]:
    """Features of the augmented copies into `augmented_features` (same settings and rules
    as the products'): (the computed rows, persisted: unpersist them once the failures are
    written; the failures as feature_rejects rows; counts)."""
    copies = tables.read(AUGMENTED).select("image_key", "parent_id", "sha256", "image")
    plan = plan_table(tables, AUGMENTED_FEATURES, copies, spec, "image_key")
    new = featurize_products(plan.todo, spec, rows_per_partition,
                             ("image_key", "parent_id")).persist()
    n_new = new.count()
    good = new.where(F.col("error").isNull()).drop("error")
    if plan.stale is None:
        tables.write(AUGMENTED_FEATURES, good, metadata=meta)
    else:
        tables.merge(AUGMENTED_FEATURES, good, plan.stale, metadata=meta)
    failed = new.where(F.col("error").isNotNull()).select(
        F.col("parent_id").alias("product_id"),
        F.concat(F.lit(f"{AUGMENTED}/"), F.col("image_key")).alias("source"),
        F.col("error").alias("reason"), F.lit(settings_detail(spec)).alias("detail"))
    n_failed = failed.count()
    plan.release()
    return new, failed, {"copies_computed": n_new - n_failed, "copies_reused": plan.kept,
                         "copies_failed": n_failed, "copies_stale": plan.n_stale}


def settings_detail(spec: FeatureModelSpec) -> str:
    """How a feature_rejects row names the settings it failed with."""
    return " ".join(str(v) for v in spec.settings().values())


@step(reads=(PRODUCTS, AUGMENTED), writes=(FEATURES, FEATURE_REJECTS, AUGMENTED_FEATURES),
      settings=("featurize", "tensorflow", "augment.enabled"))
def featurize(spark: SparkSession, cfg: Config) -> StepResult:
    """Features for every product that has none with these settings for its current image;
    rows of gone products and changed images leave. Only files holding changed rows are
    rewritten. With augment.enabled, the augmented copies' too (`augmented_features`)."""
    tables = catalog(spark, cfg)
    spec = feature_spec(spark, cfg)
    meta = {f"lookbook.{k}": str(v) for k, v in spec.settings().items()}
    copies, copy_failures, copy_counts = None, None, {}
    if cfg.augment.enabled and tables.exists(AUGMENTED):
        copies, copy_failures, copy_counts = featurize_copies(
            tables, spec, cfg.featurize.rows_per_partition, meta)
    plan = plan_table(tables, FEATURES, tables.read(PRODUCTS), spec, "product_id")
    started = time.time()
    new = featurize_products(plan.todo, spec, cfg.featurize.rows_per_partition).persist()
    n_new = new.count()
    seconds = time.time() - started
    n_failed = new.filter(F.col("error").isNotNull()).count()
    failures = new.filter(F.col("error").isNotNull()).select(
        "product_id", F.lit("featurize").alias("source"), F.col("error").alias("reason"),
        F.lit(settings_detail(spec)).alias("detail"))
    if copy_failures is not None:
        failures = failures.unionByName(copy_failures)
    good = new.filter(F.col("error").isNull()).drop("error")
    outputs = write_features(tables, plan, good, failures, settings_detail(spec), meta)
    new.unpersist()
    plan.release()
    if copies is not None:
        copies.unpersist()
        outputs.update(committed({AUGMENTED_FEATURES: tables.written[AUGMENTED_FEATURES]}))
    return featurize_result(tables, spec, plan, n_new - n_failed, n_failed, copy_counts,
                            outputs, n_new / seconds if n_new and seconds else 0.0)


def write_features(tables: Catalog, plan: FeaturizePlan, good: DataFrame, failures: DataFrame,
                   detail: str, meta: dict[str, str]) -> dict[Table, int]:
    """The new feature rows and this run's failures, as one batch; the versions committed."""
    if plan.stale is None or not tables.exists(FEATURE_REJECTS):
        return tables.write_together({FEATURES: good, FEATURE_REJECTS: failures}, metadata=meta)
    # Failures are tried again on every run: this settings' rejects become today's, other
    # settings' stay.
    rejects = tables.read_latest(FEATURE_REJECTS).where(
        ~F.col("detail").eqNullSafe(detail)).unionByName(failures)
    return committed(tables.merge_together({
        FEATURES: (good, plan.stale, None),
        FEATURE_REJECTS: tables.differences(FEATURE_REJECTS, rejects)}, metadata=meta))


def featurize_result(tables: Catalog, spec: FeatureModelSpec, plan: FeaturizePlan,
                     computed: int, n_failed: int, copy_counts: dict[str, int],
                     outputs: dict[Table, int], images_per_second: float) -> StepResult:
    return StepResult(
        f"{computed:,} computed, {plan.kept:,} already done, {n_failed:,} failed"
        + (f", {plan.n_stale:,} stale dropped" if plan.n_stale else "")
        + ("; copies: {copies_computed:,} computed, {copies_reused:,} already done, "
           "{copies_failed:,} failed".format(**copy_counts) if copy_counts else "")
        + ("" if outputs else "; nothing committed"),
        details=(f"{spec.backbone} ({spec.layers}) {spec.height}x{spec.width} {spec.precision}, "
                 f"weights: {spec.weights}, preprocessing: {spec.preprocessing}\n"
                 + written_summary(tables.written)),
        params=spec_params(spec),
        metrics={"computed": computed, "reused": plan.kept, "failed": n_failed,
                 "stale": plan.n_stale, **copy_counts, "images_per_second": images_per_second,
                 **written_metrics(tables.written)},
        outputs=outputs)
