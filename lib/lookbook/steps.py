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
from .featurize import featurize_products, plan_featurize, prepare_model, settings_match
from .ingest import format_summary, ingest_catalogue
from .tables import read_table, table_exists, write_table


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


def featurize(spark: SparkSession, cfg: Config) -> str:
    f = cfg.featurize
    spec = prepare_model(spark, f.backbone, f.weights, str(Path(f.weights_cache).expanduser()),
                         f.height, f.width, f.precision, f.batch_size,
                         cfg.tensorflow.intra_op_threads)
    print(f"featurize: {spec.backbone} {spec.height}x{spec.width} {spec.precision}, weights: "
          f"{spec.weights}, preprocessing: {spec.preprocessing}")
    features_path = cfg.table_path("features")
    products = read_table(spark, cfg.table_path("products"))
    existing = read_table(spark, features_path) if table_exists(features_path) else None
    todo, keep = plan_featurize(products, existing, spec)
    new = featurize_products(todo, spec, f.rows_per_partition).persist()
    n_new = new.count()
    n_failed = new.filter(F.col("error").isNotNull()).count()
    kept = keep.filter(settings_match(spec)).count() if keep is not None else 0
    print(f"featurize: {n_new - n_failed:,} computed, {kept:,} already done, {n_failed:,} failed")
    if n_new:
        meta = {"lookbook.job": "featurize", **{f"lookbook.{k}": str(v)
                                               for k, v in spec.settings().items()}}
        computed = new.filter(F.col("error").isNull()).drop("error")
        features = computed if keep is None else keep.unionByName(computed)
        write_table(features, features_path, metadata=meta)
        failures = new.filter(F.col("error").isNotNull()).select(
            "product_id", F.lit("featurize").alias("source"), F.col("error").alias("reason"),
            F.concat_ws(" ", *[F.col(c).cast("string") for c in spec.settings()]).alias("detail"))
        write_table(failures, cfg.table_path("feature_rejects"), metadata=meta)
    new.unpersist()
    return f"{n_new - n_failed:,} computed, {kept:,} already done, {n_failed:,} failed"


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
    "featurize": featurize,
    "report": report,
}
# What `pipeline` runs, in order.
PIPELINE = ["ingest", "featurize", "report"]


def summary_table(rows: list[tuple[str, float, str]]) -> str:
    table = pd.DataFrame(rows, columns=["step", "seconds", "result"])
    table["seconds"] = table["seconds"].map(lambda s: f"{s:.1f}")
    return table.to_string(index=False)
