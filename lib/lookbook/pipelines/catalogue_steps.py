"""Steps of the catalogue: ingest the folder into tables, and report on it."""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..io.catalog import PRODUCTS, REJECTS
from ..io.ingest import catalogue_changes, format_summary, ingest_catalogue
from ..reports.catalogue import class_counts, plot_class_balance, plot_samples, sample_per_class
from ..reports.html import write_html
from .base import StepResult, catalog, committed, step, written_metrics, written_summary


@step(reads=(), writes=(PRODUCTS, REJECTS), settings=("data_dir", "ingest"))
def ingest(spark: SparkSession, cfg: Config) -> StepResult:
    """The catalogue folder into `products` and `rejects`. Once the tables exist, only new
    and changed images are decoded, and only the files holding changed rows are rewritten."""
    tables = catalog(spark, cfg)
    previous = tables.read_latest(PRODUCTS) if tables.exists(PRODUCTS) else None
    known = previous.select("product_id", "sha256", "format", "mode", "width", "height") \
        if previous is not None else None
    result = ingest_catalogue(
        spark, cfg.data_dir,
        max_image_pixels=cfg.ingest.max_image_pixels,
        max_file_bytes=cfg.ingest.max_file_bytes,
        sample_fraction=cfg.ingest.sample_fraction,
        target_file_bytes=cfg.spark.target_file_bytes,
        known=known)
    meta = {"lookbook.data_dir": str(Path(cfg.data_dir).resolve())}
    if previous is None or not tables.exists(REJECTS):
        outputs = tables.write_together({PRODUCTS: result.products, REJECTS: result.rejects},
                                        metadata=meta)
        counts = {"new": result.ingested}
    else:
        changes = catalogue_changes(result.products, previous).persist()
        counts = dict(sorted((r["change"], r["count"])
                             for r in changes.groupBy("change").count().collect()))
        upserts = result.products.join(changes.where("change != 'deleted'"), "product_id",
                                       "left_semi")
        deleted = changes.where("change = 'deleted'").select("product_id")
        written = tables.merge_together({
            PRODUCTS: (upserts, deleted, None),
            REJECTS: tables.differences(REJECTS, result.rejects),
        }, metadata=meta)
        changes.unpersist()
        outputs = committed(written)
    result.release()
    n_rejects = sum(result.rejects_by_reason.values())
    changed = ", ".join(f"{n:,} {c}" for c, n in counts.items()) or "no change: nothing committed"
    return StepResult(
        f"{result.ingested:,} products, {n_rejects:,} rejects; {changed}",
        details=format_summary(result) + "\n" + written_summary(tables.written),
        params={"catalogue": str(Path(cfg.data_dir).resolve())},  # data_dir may be relative
        metrics={"styles_rows": result.styles_rows, "image_files": result.image_files,
                 "blank_lines": result.blank_lines, "unaccounted": result.unaccounted,
                 "decoded": result.decoded,
                 **{f"changes.{c}": n for c, n in counts.items()},
                 **written_metrics(tables.written),
                 PRODUCTS: result.ingested, REJECTS: n_rejects,
                 **{f"{PRODUCTS}.{cls}": n for cls, n in result.per_class.items()},
                 **{f"{REJECTS}.{reason}": n for reason, n in result.rejects_by_reason.items()}},
        outputs=outputs)


@step(reads=(PRODUCTS, REJECTS), writes=(), settings=("report", "augment.enabled"))
def report(spark: SparkSession, cfg: Config) -> StepResult:
    """The catalogue's report: products per class, sample images, rejects by reason."""
    tables = catalog(spark, cfg)
    products = tables.read(PRODUCTS)
    rejects = tables.read(REJECTS)
    out = Path(cfg.reports_dir) / "catalogue"
    counts = class_counts(products)
    balance = plot_class_balance(counts, out / "class_balance.png", "masterCategory")
    samples = plot_samples(sample_per_class(products, cfg.report.samples_per_class),
                           out / "samples.png")
    reasons = rejects.groupBy("reason").count().orderBy(F.desc("count")).toPandas()
    sections = [
        ("Products per masterCategory", counts),
        ("Class balance", balance),
        ("Sample images per class", samples),
        ("Rejected inputs by reason", reasons if len(reasons) else "no rejects"),
    ]
    if cfg.augment.enabled and (out.parent / "augment" / "copies.png").exists():
        sections.append(("Augmented copies of the train part (counts: ../augment/index.html)",
                         Path("../augment/copies.png")))
    page = write_html(out / "index.html", "lookbook: catalogue", sections)
    return StepResult(f"{page}", details=counts.to_string(index=False),
                      metrics={"classes": len(counts)}, artefacts=[out])
