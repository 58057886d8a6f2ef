"""Catalogue folder (styles.csv + images/) -> `products` and `rejects` DataFrames.

Every input item ends in exactly one place: a product, or a reject row with a reason. Images
are read by Spark (`binaryFile`), so this scales with the cluster; only the styles table, which
is small, is ever broadcast.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .images import inspect_image
from .styles import PRODUCT_FIELDS, check_header, is_header, parse_styles_line

STYLES_SCHEMA = T.StructType([
    T.StructField("product_id", T.LongType()),
    *[T.StructField(name, T.StringType()) for name in PRODUCT_FIELDS[1:7]],
    T.StructField("year", T.IntegerType()),
    T.StructField("usage", T.StringType()),
    T.StructField("display_name", T.StringType()),
    T.StructField("reason", T.StringType()),
    T.StructField("line", T.StringType()),
])

FACTS_SCHEMA = T.StructType([
    T.StructField("sha256", T.StringType()),
    T.StructField("format", T.StringType()),
    T.StructField("mode", T.StringType()),
    T.StructField("width", T.IntegerType()),
    T.StructField("height", T.IntegerType()),
    T.StructField("error", T.StringType()),
])

STYLES_SOURCE = "styles.csv"
IMAGES_DIR = "images"


@dataclass
class IngestResult:
    products: DataFrame
    rejects: DataFrame
    styles_rows: int = 0
    image_files: int = 0
    ingested: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Drop the cached intermediate data once the tables are written."""
        for df in self.cached:
            df.unpersist()


# --- styles.csv ------------------------------------------------------------------------------

def read_styles(spark: SparkSession, styles_path: str) -> DataFrame:
    """Every data line of styles.csv parsed (malformed names repaired), with `reason` set on
    lines that cannot become a product and the raw `line` kept for the rejects table."""
    lines = spark.read.text(styles_path)
    first = lines.first()
    if first is None:
        raise ValueError(f"{styles_path} is empty")
    check_header(first.value)

    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = [dict(parse_styles_line(line), line=line) for line in batch["value"]
                    if line.strip() and not is_header(line)]
            yield pd.DataFrame(rows, columns=STYLES_SCHEMA.names).astype(
                {"product_id": "Int64", "year": "Int32"})

    return lines.mapInPandas(parse, STYLES_SCHEMA)


def split_duplicate_ids(styles: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(good rows, rejects). Identical repeated lines keep one copy; an id whose rows disagree
    cannot be trusted, so all its rows are rejected."""
    parsed = styles.filter(F.col("reason").isNull())
    per_id = Window.partitionBy("product_id")
    per_line = Window.partitionBy("product_id", "line").orderBy("line")
    ranked = (parsed
              .withColumn("_versions", F.size(F.collect_set("line").over(per_id)))
              .withColumn("_copy", F.row_number().over(per_line)))
    conflicting = ranked.filter("_versions > 1").select(
        "product_id", "line",
        F.concat(F.lit("duplicate id with conflicting rows ("), F.col("_versions"),
                 F.lit(" versions)")).alias("reason"))
    repeated = ranked.filter("_versions = 1 AND _copy > 1").select(
        "product_id", "line", F.lit("duplicate row (identical copy kept)").alias("reason"))
    good = ranked.filter("_versions = 1 AND _copy = 1").drop("_versions", "_copy", "reason",
                                                              "line")
    malformed = styles.filter(F.col("reason").isNotNull()).select("product_id", "line", "reason")
    rejects = malformed.unionByName(conflicting).unionByName(repeated).select(
        "product_id", F.lit(STYLES_SOURCE).alias("source"), "reason",
        F.col("line").alias("detail"))
    return good, rejects


# --- images/ ---------------------------------------------------------------------------------

def _with_names(files: DataFrame) -> DataFrame:
    name = F.element_at(F.split("path", "/"), -1)
    stem = F.regexp_extract(name, r"^(.*?)(\.[^.]*)?$", 1)
    return (files
            .withColumn("image_file", F.concat(F.lit(IMAGES_DIR + "/"), name))
            .withColumn("product_id", F.when(stem.rlike(r"^[0-9]{1,18}$"), stem.cast("long"))))


def unreadable_files(spark: SparkSession, scan: DataFrame, scanned_names: set[str],
                     max_file_bytes: int) -> DataFrame:
    """Files the content scan does not return: too large (the length filter is pushed down,
    so their bytes are never read) and empty (Spark's file scans skip zero-length files; they
    are the file index's names that no scan returned). Columns: image_file, product_id,
    length, _reason."""
    too_large = _with_names(scan.filter(F.col("length") > max_file_bytes).select("path", "length"))
    too_large_names = {r[0] for r in too_large.select("image_file").collect()}
    seen = scanned_names | too_large_names
    empty = [(p,) for p in scan.inputFiles()
             if f"{IMAGES_DIR}/{p.rsplit('/', 1)[-1]}" not in seen]
    empties = _with_names(spark.createDataFrame(empty, "path string")).withColumn(
        "length", F.lit(0).cast("long")).withColumn("_reason", F.lit("empty file"))
    too_large = too_large.withColumn("_reason", F.concat(
        F.lit("file too large: "), F.col("length"), F.lit(f" bytes > limit {max_file_bytes}")))
    return too_large.unionByName(empties).drop("path")


def inspect_images(images: DataFrame, max_pixels: int) -> DataFrame:
    """Adds `facts` (sha256, format, mode, width, height, error) from each file's content."""

    @F.pandas_udf(FACTS_SCHEMA)
    def facts(content: pd.Series) -> pd.DataFrame:
        return pd.DataFrame([vars(inspect_image(b, max_pixels)) for b in content],
                            columns=FACTS_SCHEMA.names).astype({"width": "Int32",
                                                                 "height": "Int32"})

    return images.withColumn("facts", facts("content"))


# --- the whole catalogue ---------------------------------------------------------------------

def sample_filter(fraction: float):
    """Deterministic sample by product id (same products on every run and machine)."""
    if fraction >= 1.0:
        return F.lit(True)
    return (F.col("product_id").isNull()
            | (F.pmod(F.xxhash64("product_id"), F.lit(1_000_000)) < int(fraction * 1_000_000)))


def ingest_catalogue(spark: SparkSession, data_dir: str, max_image_pixels: int,
                     max_file_bytes: int, sample_fraction: float = 1.0,
                     target_file_bytes: int = 128 * 1024 * 1024) -> IngestResult:
    """Read, validate and join a catalogue folder. Images are decoded once and cached for the
    products and rejects outputs; call `result.release()` after writing them."""
    started = time.time()
    root = Path(data_dir)
    styles_path, images_dir = root / STYLES_SOURCE, root / IMAGES_DIR
    for required in (styles_path, images_dir):
        if not required.exists():
            raise FileNotFoundError(
                f"{required} not found: a catalogue folder holds styles.csv and images/<id>.jpg")
    in_sample = sample_filter(sample_fraction)

    styles = read_styles(spark, str(styles_path)).filter(in_sample).persist()
    styles_ok, styles_bad = split_duplicate_ids(styles)
    styles_ok = styles_ok.persist()

    # One scan reads every image's bytes once; its listing also serves the checks below.
    scan = spark.read.format("binaryFile").load(str(images_dir))
    readable = _with_names(scan.filter(F.col("length") <= max_file_bytes)).filter(in_sample)
    rejected_rows = (styles_bad.filter(F.col("product_id").isNotNull())
                     .select("product_id").distinct().withColumn("_row_rejected", F.lit(True)))
    decoded = (inspect_images(readable, max_image_pixels)
               .join(F.broadcast(styles_ok.withColumn("_has_row", F.lit(True))), "product_id",
                     "left")
               .join(F.broadcast(rejected_rows), "product_id", "left")
               .persist(StorageLevel.MEMORY_AND_DISK))
    decoded.count()  # decode every image once, in parallel, before anything coalesces

    scanned_names = {r[0] for r in decoded.select("image_file").collect()}
    unreadable = unreadable_files(spark, scan, scanned_names, max_file_bytes).filter(in_sample)
    files = (decoded.select("image_file", "product_id", "length")
             .unionByName(unreadable.drop("_reason")).persist())
    several = (files.filter(F.col("product_id").isNotNull()).groupBy("product_id").count()
               .filter("count > 1").select("product_id", F.lit(True).alias("_several")))
    outcome = (F.when(F.col("product_id").isNull(), F.lit("image file name is not a product id"))
               .when(F.col("_several").isNotNull(),
                     F.lit("more than one image file for this product id"))
               .when(F.col("_has_row").isNull() & F.col("_row_rejected").isNotNull(),
                     F.lit("its styles.csv row was rejected (see the styles.csv reject)"))
               .when(F.col("_has_row").isNull(), F.lit("image has no row in styles.csv"))
               .otherwise(F.col("facts.error")))
    checked = decoded.join(F.broadcast(several), "product_id", "left").withColumn("_reason",
                                                                                  outcome)
    products = checked.filter(F.col("_reason").isNull()).select(
        *PRODUCT_FIELDS, "image_file", F.col("content").alias("image"),
        *[F.col(f"facts.{c}").alias(c) for c in ("format", "mode", "width", "height", "sha256")])
    image_bad = checked.filter(F.col("_reason").isNotNull()).select(
        "product_id", F.col("image_file").alias("source"), F.col("_reason").alias("reason"),
        F.concat(F.col("length"), F.lit(" bytes")).alias("detail"))
    no_image = styles_ok.join(files.select("product_id").distinct(), "product_id", "left_anti").select(
        "product_id", F.lit(STYLES_SOURCE).alias("source"),
        F.lit("no image file for this row").alias("reason"), F.lit(None).cast("string").alias("detail"))
    unreadable_bad = unreadable.select(
        "product_id", F.col("image_file").alias("source"), F.col("_reason").alias("reason"),
        F.concat(F.col("length"), F.lit(" bytes")).alias("detail"))
    rejects = (styles_bad.unionByName(unreadable_bad).unionByName(image_bad)
               .unionByName(no_image).coalesce(1).persist())

    total_bytes = files.agg(F.sum("length")).first()[0] or 0
    result = IngestResult(
        products=products.coalesce(max(1, -(-total_bytes // target_file_bytes))),
        rejects=rejects,
        cached=[decoded, styles, styles_ok, files, rejects])
    result.styles_rows = styles.count()
    result.image_files = files.count()
    result.ingested = result.products.count()
    result.rejects_by_reason = _counts(rejects, F.regexp_replace("reason", r"[0-9]+", "N"))
    result.per_class = _counts(result.products, F.coalesce("master_category", F.lit("(none)")))
    result.seconds = time.time() - started
    return result


def _counts(df: DataFrame, key) -> dict[str, int]:
    rows = df.groupBy(key.alias("key")).count().collect()
    return dict(sorted(((r["key"], r["count"]) for r in rows), key=lambda kv: -kv[1]))


def format_summary(result: IngestResult) -> str:
    lines = [
        f"styles.csv rows read : {result.styles_rows:,}",
        f"image files read     : {result.image_files:,}",
        f"products ingested    : {result.ingested:,}",
        f"rejected             : {sum(result.rejects_by_reason.values()):,}",
    ]
    lines += [f"  {n:>8,}  {reason}" for reason, n in result.rejects_by_reason.items()]
    lines.append("per master_category:")
    lines += [f"  {n:>8,}  {cls}" for cls, n in result.per_class.items()]
    rate = result.image_files / result.seconds if result.seconds else 0.0
    lines.append(f"time                 : {result.seconds:.1f} s ({rate:,.0f} images/s)")
    return "\n".join(lines)
