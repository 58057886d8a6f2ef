"""Steps of the catalogue: ingest the folder into tables, and report on it."""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..io.ingest import format_summary, ingest_catalogue
from ..reports.catalogue import class_counts, plot_class_balance, plot_samples, sample_per_class
from ..reports.html import write_html
from .base import StepResult, catalog, step


@step("ingest")
def ingest(spark: SparkSession, cfg: Config) -> StepResult:
    tables = catalog(spark, cfg)
    result = ingest_catalogue(
        spark, cfg.data_dir,
        max_image_pixels=cfg.ingest.max_image_pixels,
        max_file_bytes=cfg.ingest.max_file_bytes,
        sample_fraction=cfg.ingest.sample_fraction,
        target_file_bytes=cfg.spark.target_file_bytes)
    meta = {"lookbook.data_dir": str(Path(cfg.data_dir).resolve())}
    outputs = tables.write_together({"products": result.products, "rejects": result.rejects},
                                    metadata=meta)
    result.release()
    n_rejects = sum(result.rejects_by_reason.values())
    return StepResult(
        f"{result.ingested:,} products, {n_rejects:,} rejects",
        details=format_summary(result),
        params={"catalogue": str(Path(cfg.data_dir).resolve())},  # data_dir may be relative
        metrics={"styles_rows": result.styles_rows, "image_files": result.image_files,
                 "blank_lines": result.blank_lines, "unaccounted": result.unaccounted,
                 "products": result.ingested, "rejects": n_rejects,
                 **{f"products.{cls}": n for cls, n in result.per_class.items()},
                 **{f"rejects.{reason}": n for reason, n in result.rejects_by_reason.items()}},
        outputs=outputs)


@step("report")
def report(spark: SparkSession, cfg: Config) -> StepResult:
    tables = catalog(spark, cfg)
    products = tables.read("products")
    rejects = tables.read("rejects")
    out = Path(cfg.reports_dir) / "catalogue"
    counts = class_counts(products)
    balance = plot_class_balance(counts, out / "class_balance.png", "masterCategory")
    samples = plot_samples(sample_per_class(products, cfg.report.samples_per_class),
                           out / "samples.png")
    reasons = rejects.groupBy("reason").count().orderBy(F.desc("count")).toPandas()
    page = write_html(out / "index.html", "lookbook: catalogue", [
        ("Products per masterCategory", counts),
        ("Class balance", balance),
        ("Sample images per class", samples),
        ("Rejected inputs by reason", reasons if len(reasons) else "no rejects"),
    ])
    return StepResult(f"{page}", details=counts.to_string(index=False),
                      metrics={"classes": len(counts)}, artefacts=[out])
