"""The augment step: copies of the small classes' train products, for the classifier."""
from __future__ import annotations

import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..augment.copies import class_rates, make_copies, with_copy_counts
from ..augment.plan import LABEL_COLUMNS, plan_copies, train_parents
from ..augment.transforms import TransformRanges
from ..config import AugmentSettings, Config
from ..io.catalog import AUGMENTED, PRODUCTS, Catalog
from ..io.ingest import catalogue_changes
from ..reports.augment import counts_table, gallery_parents, plot_copies
from ..reports.html import write_html
from ..tasks import balanced_partitions
from .base import StepResult, catalog, step, written_metrics, written_summary

SETTINGS_KEY = "lookbook.augment_settings"


def transform_ranges(a: AugmentSettings) -> TransformRanges:
    return TransformRanges(a.rotation_degrees, a.width_shift, a.height_shift, a.shear_degrees,
                           a.zoom, a.horizontal_flip, a.brightness)


def settings_label(cfg: Config) -> str:
    """Everything that decides which copies exist and what they look like: a copy made with
    other settings is made again."""
    a, s = cfg.augment, cfg.split
    return (f"seed={a.seed} target={a.target_per_class} max_factor={a.max_factor} "
            f"label={cfg.train.label} split={s.train}/{s.validation}/{s.salt} "
            + transform_ranges(a).label())


@step(reads=(PRODUCTS,), writes=(AUGMENTED,),
      settings=("augment", "split", "train.label", "report.samples_per_class"))
def augment(spark: SparkSession, cfg: Config) -> StepResult:
    """Copies of the train products of classes below the target: new and changed products'
    only once the table exists; copies of products that left the train part, changed, or
    whose class no longer gets copies leave."""
    if not cfg.augment.enabled:
        return StepResult("off (augment.enabled=false): no copies made; featurize and train "
                          "use the originals only")
    tables = catalog(spark, cfg)
    label, settings = cfg.train.label, settings_label(cfg)
    inputs = augment.inputs(tables, {SETTINGS_KEY: settings})
    train_counts, rates, candidates = copy_candidates(tables, cfg)
    existing = tables.read_latest(AUGMENTED) if tables.exists(AUGMENTED) else None
    since = inputs.since(PRODUCTS)
    todo, leaving = plan_copies(candidates, existing, settings, changed_products(tables, since))
    n_todo, failed, seconds = copy_and_write(spark, tables, cfg, todo, existing, leaving,
                                           inputs.current())
    written = tables.written[AUGMENTED]
    now = tables.read(AUGMENTED) if written.version is not None else existing
    copies = {r[label]: r["count"] for r in now.groupBy(label).count().collect()}
    table = counts_table(train_counts, copies, rates)
    page = write_report(tables, now, table, label, Path(cfg.reports_dir) / "augment",
                        cfg.report.samples_per_class)
    how = "every candidate" if since is None else f"new and changed since products version {since}"
    # A parent passed ingest's full decode, so a copy that fails is a bug: each is named.
    failures = "".join(f"copy {key} failed: {error}\n" for key, error in failed)
    return StepResult(
        f"{sum(copies.values()):,} copies of train products in {len(copies)} classes "
        f"({n_todo - len(failed):,} made for {how}, {len(failed)} failed)"
        + ("" if written.version is not None else "; nothing committed"),
        details=f"{failures}{table.to_string(index=False)}\nreport: {page}\n"
                + written_summary(tables.written),
        params={"augment_settings": settings},
        metrics={"made": n_todo - len(failed), "failed": len(failed),
                 "copies": sum(copies.values()),
                 "copies_per_second": n_todo / seconds if n_todo and seconds else 0.0,
                 **{f"train.{name}": n for name, n in train_counts.items()},
                 **{f"copies.{name}": n for name, n in copies.items()},
                 **written_metrics(tables.written)},
        outputs={AUGMENTED: written.version} if written.version is not None else {},
        artefacts=[page.parent])


def copy_candidates(tables: Catalog, cfg: Config) -> tuple[dict, dict, DataFrame]:
    """(train products per class, each class's rate, the train products of the classes that
    get copies, with how many each)."""
    a, s, label = cfg.augment, cfg.split, cfg.train.label
    parents = train_parents(tables.read(PRODUCTS), label, s.train, s.validation, s.salt)
    train_counts = {r[label]: r["count"] for r in parents.groupBy(label).count().collect()}
    rates = class_rates(train_counts, a.target_per_class, a.max_factor)
    growing = [name for name, rate in rates.items() if rate > 1]
    candidates = with_copy_counts(parents.where(F.col(label).isin(growing)), label, rates, a.seed)
    return train_counts, rates, candidates


def changed_products(tables: Catalog, since: int | None) -> DataFrame | None:
    """Product ids new or changed since products version `since`; None (every candidate is
    considered) without one."""
    if since is None:
        return None
    changes = catalogue_changes(tables.read(PRODUCTS), tables.read(PRODUCTS, since))
    return changes.where("change != 'deleted'").select("product_id")


def copy_and_write(spark: SparkSession, tables: Catalog, cfg: Config, todo: DataFrame,
                   existing: DataFrame | None, leaving: DataFrame | None,
                   meta: dict[str, str]) -> tuple[int, list, float]:
    """Make the planned copies and write them (a merge once the table exists): (copies
    attempted, the failures' (image_key, error), seconds)."""
    a = cfg.augment
    # Persisted: counted here, then copied (the plan reads products and the table).
    todo = todo.select("product_id", F.col("sha256").alias("parent_sha256"),
                       *LABEL_COLUMNS, "image", "copies").persist()
    n_todo = todo.agg(F.sum("copies")).first()[0] or 0
    partitions = balanced_partitions(n_todo, 1024, spark.sparkContext.defaultParallelism)
    started = time.time()
    made = make_copies(todo, a.seed, transform_ranges(a), partitions).persist()
    failed = made.where(F.col("error").isNotNull()).select("image_key", "error").collect()
    new = (made.where(F.col("error").isNull()).drop("error")
           .withColumn("sha256", F.sha2("image", 256))
           .withColumn("settings", F.lit(settings_label(cfg))))
    if existing is None:
        tables.write(AUGMENTED, new, metadata=meta)
    else:
        tables.merge(AUGMENTED, new, leaving, match_on=("parent_id",), metadata=meta)
    seconds = time.time() - started
    made.unpersist()
    todo.unpersist()
    return n_todo, failed, seconds


def write_report(tables: Catalog, augmented, table, label: str, out: Path,
                 per_class: int) -> Path:
    """reports/augment: counts per class before and after, and parents beside their copies."""
    ids = gallery_parents(augmented, label, min(per_class, 3))
    parents = (tables.read(PRODUCTS).where(F.col("product_id").isin(ids))
               .select("product_id", label, "image").toPandas())
    copies = augmented.where(F.col("parent_id").isin(ids)).toPandas()
    gallery = plot_copies(parents, copies, label, out / "copies.png")
    return write_html(out / "index.html", "lookbook: augmented copies", [
        ("Train products and copies per class", table),
        ("Parents (left) beside their copies", gallery),
    ])
