"""Pipeline steps: config in, library calls, tables and files out. Each returns a one-line
summary for the pipeline's progress output. Jobs and the `pipeline` job run these."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from . import report as rpt
from .config import Config
from .ingest import format_summary, ingest_catalogue
from .tables import read_table, write_table


def ingest(spark: SparkSession, cfg: Config) -> str:
    result = ingest_catalogue(
        spark, cfg.data_dir,
        max_image_pixels=cfg.ingest.max_image_pixels,
        max_file_bytes=cfg.ingest.max_file_bytes,
        sample_fraction=cfg.ingest.sample_fraction,
        target_file_bytes=cfg.spark.target_file_bytes)
    meta = {"lookbook.job": "ingest", "lookbook.data_dir": str(Path(cfg.data_dir).resolve())}
    products_version = write_table(result.products, cfg.table_path("products"), metadata=meta)
    rejects_version = write_table(result.rejects, cfg.table_path("rejects"), metadata=meta)
    result.release()
    print(format_summary(result))
    print(f"wrote {cfg.table_path('products')} (version {products_version}) and "
          f"{cfg.table_path('rejects')} (version {rejects_version})")
    n_rejects = sum(result.rejects_by_reason.values())
    return f"{result.ingested:,} products, {n_rejects:,} rejects"


def report(spark: SparkSession, cfg: Config) -> str:
    products = read_table(spark, cfg.table_path("products"))
    rejects = read_table(spark, cfg.table_path("rejects"))
    out = Path(cfg.reports_dir) / "catalogue"
    counts = rpt.class_counts(products)
    balance = rpt.plot_class_balance(counts, out / "class_balance.png", "masterCategory")
    samples = rpt.plot_samples(rpt.sample_per_class(products, cfg.report.samples_per_class),
                               out / "samples.png")
    reasons = rejects.groupBy("reason").count().orderBy(F.desc("count")).toPandas()
    page = rpt.write_html(out / "index.html", "lookbook: catalogue", [
        ("Products per masterCategory", counts),
        ("Class balance", balance),
        ("Sample images per class", samples),
        ("Rejected inputs by reason", reasons if len(reasons) else "no rejects"),
    ])
    print(f"report: {page}\n{counts.to_string(index=False)}")
    return f"{page}"


STEPS: dict[str, Callable[[SparkSession, Config], str]] = {
    "ingest": ingest,
    "report": report,
}
# What `pipeline` runs, in order.
PIPELINE = ["ingest", "report"]


def summary_table(rows: list[tuple[str, float, str]]) -> str:
    table = pd.DataFrame(rows, columns=["step", "seconds", "result"])
    table["seconds"] = table["seconds"].map(lambda s: f"{s:.1f}")
    return table.to_string(index=False)
