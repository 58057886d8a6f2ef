"""Catalogue folder (styles.csv + images/) -> `products` and `rejects` DataFrames.

Every input item ends in exactly one place: each line of styles.csv after the header is a
product or a reject naming its line (`styles.csv:<n>`); blank lines are skipped and counted.
Each file under images/ (any depth, hidden ones included) is a product or a reject naming the
file. Images are read by Spark (`binaryFile`), so this scales with the cluster; only the styles
table, which is small, is ever broadcast. The driver lists the folder itself as well, to see
what Spark's listing skips (hidden files, names that are not UTF-8, broken links) and to say
why a listed file was not read.
"""
from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .changes import changes_by_key
from .images import inspect_image
from .styles import (
    BLANK_LINE,
    PRODUCT_FIELDS,
    check_header,
    decode_line,
    parse_product_id,
    parse_styles_line,
    truncate,
)

STYLES_SCHEMA = T.StructType([
    T.StructField("product_id", T.LongType()),
    *[T.StructField(name, T.StringType()) for name in PRODUCT_FIELDS[1:7]],
    T.StructField("year", T.IntegerType()),
    T.StructField("usage", T.StringType()),
    T.StructField("display_name", T.StringType()),
    T.StructField("reason", T.StringType()),
    T.StructField("line", T.StringType()),
    T.StructField("line_no", T.LongType()),
])

FACTS_SCHEMA = T.StructType([
    T.StructField("sha256", T.StringType()),
    T.StructField("format", T.StringType()),
    T.StructField("mode", T.StringType()),
    T.StructField("width", T.IntegerType()),
    T.StructField("height", T.IntegerType()),
    T.StructField("error", T.StringType()),
])

BROADCAST_KNOWN_ROWS = 2_000_000  # known images' facts: about 150 bytes a row
STYLES_SOURCE = "styles.csv"
IMAGES_DIR = "images"


@dataclass
class IngestResult:
    products: DataFrame
    rejects: DataFrame
    styles_rows: int = 0  # lines after the header that are not blank: each a product or reject
    blank_lines: int = 0  # skipped
    image_files: int = 0  # files under images/, any depth: each a product or a reject
    decoded: int = 0  # images decoded (the others' bytes matched a product's known sha256)
    ingested: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Drop the cached intermediate data once the tables are written."""
        for df in self.cached:
            df.unpersist()

    @property
    def unaccounted(self) -> int:
        """Inputs in no output, or in two, by the counts: a product takes one row and one
        file; every other row and file is one reject. 0 when the ingest kept its promise."""
        return (self.styles_rows + self.image_files - 2 * self.ingested
                - sum(self.rejects_by_reason.values()))


# --- styles.csv ------------------------------------------------------------------------------

def number_lines(lines: DataFrame) -> DataFrame:
    """`spark.read.text` rows -> (raw: the line's bytes, line_no: its 1-based line number in
    the file). Distributed like `RDD.zipWithIndex`: a text file's partitions are its
    consecutive byte ranges in order, so a line's number is the lines in earlier partitions
    (one small count per partition, collected) plus its position in its own partition. The
    bytes, not the decoded string, are kept: invalid UTF-8 would fail the Arrow conversion
    of the whole batch."""
    tagged = lines.select(F.col("value").cast("binary").alias("raw"),
                          F.monotonically_increasing_id().alias("_mid"))
    part = F.shiftright("_mid", 33)
    counts = sorted((r[0], r[1]) for r in tagged.groupBy(part.alias("p")).count().collect())
    offsets, total = [], 0
    for p, n in counts:
        offsets += [F.lit(p), F.lit(total)]
        total += n
    offset = F.element_at(F.create_map(*offsets), part) if offsets else F.lit(0)
    return tagged.select("raw", (offset + F.col("_mid").bitwiseAND((1 << 33) - 1) + 1)
                         .cast("long").alias("line_no"))


def read_styles(spark: SparkSession, styles_path: str) -> DataFrame:
    """Every line of styles.csv after the header parsed (malformed names repaired), with its
    `line_no`, `reason` set on lines that cannot become a product (`BLANK_LINE` on blank
    ones) and the raw `line` kept (truncated) for the rejects table. One bad line never fails
    the batch: every value is checked against its column type before the frame is built."""
    lines = spark.read.text(styles_path)
    first = lines.select(F.col("value").cast("binary")).first()
    if first is None:
        raise ValueError(f"{styles_path} is empty")
    check_header(decode_line(bytes(first[0]), 1)[0])

    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = []
            for raw, line_no in zip(batch["raw"], batch["line_no"]):
                if line_no == 1:
                    continue
                text, bad_bytes = decode_line(bytes(raw), int(line_no))
                row = parse_styles_line(text)
                if bad_bytes:
                    row = dict.fromkeys(row, None) | {"product_id": row["product_id"],
                                                      "reason": bad_bytes}
                rows.append(dict(row, line=truncate(text), line_no=int(line_no)))
            frame = pd.DataFrame(rows, columns=STYLES_SCHEMA.names)
            yield frame.astype({"product_id": "Int64", "year": "Int32", "line_no": "int64"})

    return number_lines(lines).mapInPandas(parse, STYLES_SCHEMA)


def _line_source(line_no="line_no"):
    return F.concat(F.lit(STYLES_SOURCE + ":"), F.col(line_no))


def split_duplicate_ids(styles: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(good rows, rejects). Identical repeated lines keep the first copy; an id whose rows
    disagree cannot be trusted, so all its rows are rejected. Blank lines are neither."""
    parsed = styles.filter(F.col("reason").isNull())
    per_id = Window.partitionBy("product_id")
    per_line = Window.partitionBy("product_id", "line").orderBy("line_no")
    ranked = (parsed
              .withColumn("_versions", F.size(F.collect_set("line").over(per_id)))
              .withColumn("_copy", F.row_number().over(per_line))
              .withColumn("_first", F.min("line_no").over(per_line)))
    conflicting = ranked.filter("_versions > 1").select(
        "product_id", "line", "line_no",
        F.concat(F.lit("duplicate id with conflicting rows ("), F.col("_versions"),
                 F.lit(" versions)")).alias("reason"))
    repeated = ranked.filter("_versions = 1 AND _copy > 1").select(
        "product_id", "line", "line_no",
        F.concat(F.lit("duplicate row (identical copy kept, line "), F.col("_first"),
                 F.lit(")")).alias("reason"))
    good = ranked.filter("_versions = 1 AND _copy = 1").drop("_versions", "_copy", "_first",
                                                              "reason")
    malformed = styles.filter(F.col("reason").isNotNull() & (F.col("reason") != BLANK_LINE))
    rejects = (malformed.select("product_id", "line", "line_no", "reason")
               .unionByName(conflicting).unionByName(repeated).select(
                   "product_id", _line_source().alias("source"), "reason",
                   F.col("line").alias("detail")))
    return good, rejects


# --- images/ ---------------------------------------------------------------------------------

HIDDEN = "hidden file (name starts with '.' or '_'): not read"
IN_SUBFOLDER = "in a subfolder of images/: only images/<id>.<ext> are catalogue images"
BAD_NAME = "file name is not valid UTF-8: not read"
VANISHED = "file vanished during ingest"
# Hadoop's local file system opens `.<name>.crc` beside each file, a relative URI that a ':'
# makes invalid (URISyntaxException): the scan skips the file (ignoreCorruptFiles).
COLON_NAME = "could not be read: Hadoop cannot open a file whose name contains ':'"


@dataclass(frozen=True)
class ListedFile:
    """One file under images/, as the driver's listing saw it."""
    name: str  # relative to the catalogue folder: images/<relative path> (image_name())
    product_id: int | None
    size: int | None  # None when it could not be stat'ed (a broken link)
    problem: str | None  # why it will not be read (a reject reason); None: Spark reads it


def image_name(relative: str) -> str:
    """The one canonical name of a file under images/: `images/` + its path relative to the
    folder, as the file system spells it (no URL encoding). Bytes that are not UTF-8 are
    shown as \\xNN escapes."""
    text = relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return f"{IMAGES_DIR}/{text}"


def product_id_of_file(file_name: str) -> int | None:
    """The product id an image file name stands for (`<id>.<ext>`), by styles.csv's rule."""
    return parse_product_id(re.sub(r"\.[^.]*$", "", file_name.rsplit("/", 1)[-1]))


def stat_file(path: str) -> tuple[os.stat_result | None, str | None]:
    """The file's stat (links followed), or None and why it has none."""
    try:
        return os.stat(path), None
    except FileNotFoundError:
        return None, ("could not be read: broken symbolic link" if os.path.islink(path)
                      else VANISHED)
    except OSError as exc:
        return None, f"could not be read: {exc.strerror or exc}"


def stat_problem(path: str, st: os.stat_result, max_file_bytes: int,
                 open_it: bool = False) -> str | None:
    """Why the file `st` describes cannot be ingested, or None. Never opens anything but a
    regular file (a named pipe would block)."""
    if stat.S_ISDIR(st.st_mode):
        return VANISHED + " (replaced by a directory)" if open_it else None
    if not stat.S_ISREG(st.st_mode):
        kind = ("named pipe" if stat.S_ISFIFO(st.st_mode) else "socket"
                if stat.S_ISSOCK(st.st_mode) else "device")
        return f"could not be read: not a regular file ({kind})"
    if st.st_size == 0:
        return "empty file"
    if st.st_size > max_file_bytes:
        return f"file too large: {st.st_size} bytes > limit {max_file_bytes}"
    if open_it:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            return f"could not be read: {exc.strerror or exc}"
    return None


def file_problem(path: str, max_file_bytes: int, open_it: bool = False) -> str | None:
    """Why the file at `path` cannot be ingested, from the file system now, or None."""
    st, problem = stat_file(path)
    return problem or stat_problem(path, st, max_file_bytes, open_it)


def list_image_files(images_dir: str, max_file_bytes: int) -> list[ListedFile]:
    """Every file under images/, at any depth, hidden ones included (Spark's listing skips
    names starting with '.' or '_' without a word), each with the reason it will not be read
    or None. Symbolic links are followed, as Spark follows them (each directory once)."""
    listed, seen_dirs = [], set()

    def unlistable(exc: OSError) -> None:
        if os.path.realpath(exc.filename) == os.path.realpath(images_dir):
            raise exc
        relative = os.path.relpath(exc.filename, images_dir)
        listed.append(ListedFile(image_name(relative), None, None,
                                 f"folder could not be listed: {exc.strerror or exc}"))

    for folder, dirs, files in os.walk(images_dir, onerror=unlistable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        relative_dir = os.path.relpath(folder, images_dir)
        for file_name in files:
            relative = file_name if relative_dir == "." else f"{relative_dir}/{file_name}"
            path = os.path.join(folder, file_name)
            st, unstatable = stat_file(path)  # one stat per file: the driver lists them all
            parts = relative.split("/")
            name = image_name(relative)
            if any(p.startswith((".", "_")) for p in parts):
                problem = HIDDEN
            elif len(parts) > 1:
                problem = IN_SUBFOLDER
            elif name != f"{IMAGES_DIR}/{relative}":
                problem = BAD_NAME
            elif ":" in file_name:
                problem = COLON_NAME
            else:
                problem = unstatable or stat_problem(path, st, max_file_bytes)
            listed.append(ListedFile(name, product_id_of_file(name),
                                     st.st_size if st else None, problem))
    return listed


def scan_images(spark: SparkSession, images_dir: str) -> tuple[DataFrame, str]:
    """Spark's read of every file's bytes (`binaryFile`, listed now, read lazily) and the
    folder's qualified path as Spark spells the files' `path`. Recursive lookup, so that a
    `key=value` subfolder cannot turn into a partition column that hides the top-level
    files; subfolder files are dropped by name (they are rejects from the driver listing).
    A file that vanishes or cannot be read after the listing is skipped, not fatal: the
    driver classifies what the scan did not return."""
    scan = (spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("ignoreMissingFiles", "true")
            .option("ignoreCorruptFiles", "true")
            .load(images_dir))
    jvm = spark.sparkContext._jvm
    folder = jvm.org.apache.hadoop.fs.Path(images_dir)
    fs = folder.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return scan, fs.makeQualified(folder).toString().rstrip("/")


def _with_names(files: DataFrame, base: str) -> DataFrame:
    """image_file (image_name() of the file) and product_id (product_id_of_file()) from
    Spark's `path`; rows of files in subfolders get a null image_file."""
    relative = F.substring("path", len(base) + 2, 1 << 30)
    top_level = F.col("path").startswith(base + "/") & ~relative.contains("/")
    stem = F.regexp_extract(relative, r"^(.*?)(\.[^.]*)?$", 1)
    return (files
            .withColumn("image_file", F.when(top_level, F.concat(F.lit(IMAGES_DIR + "/"),
                                                                 relative)))
            .withColumn("product_id", F.when(stem.rlike(r"^[0-9]{1,19}$"),
                                             stem.try_cast("long"))))


def inspect_images(images: DataFrame, max_pixels: int, known: DataFrame | None = None
                   ) -> DataFrame:
    """Adds `facts` (sha256, format, mode, width, height, error) from each file's content.
    With `known` (product_id, sha256, format, mode, width, height of images already
    validated), a file whose product id and sha256 are known takes the known facts and is not
    sent to Python nor decoded: a nightly run decodes only new and changed images."""

    @F.pandas_udf(FACTS_SCHEMA)
    def facts(content: pd.Series) -> pd.DataFrame:
        rows = [vars(inspect_image(b, max_pixels)) if b is not None else {} for b in content]
        return pd.DataFrame(rows, columns=FACTS_SCHEMA.names).astype({"width": "Int32",
                                                                      "height": "Int32"})

    if known is None:
        return images.withColumn("facts", facts("content")).withColumn("_decoded", F.lit(True))
    # Broadcast while it fits (no shuffle of the image bytes); above, a shuffled join.
    hint = F.broadcast if known.count() <= BROADCAST_KNOWN_ROWS else (lambda df: df)
    reuse = hint(known).select("product_id", F.col("sha256").alias("_sha"), F.struct(
        "sha256", "format", "mode", "width", "height",
        F.lit(None).cast("string").alias("error")).alias("_known"))
    matched = (images.withColumn("_sha", F.sha2("content", 256))
               .join(reuse, ["product_id", "_sha"], "left")
               .withColumn("_decoded", F.col("_known").isNull()))
    return (matched.withColumn("facts", facts(F.when(F.col("_decoded"), F.col("content"))))
            .withColumn("facts", F.when(F.col("_decoded"), F.col("facts"))
                        .otherwise(F.col("_known")))
            .drop("_sha", "_known"))


# --- the whole catalogue ---------------------------------------------------------------------

def sample_filter(fraction: float):
    """Deterministic sample by product id (same products on every run and machine)."""
    if fraction >= 1.0:
        return F.lit(True)
    return (F.col("product_id").isNull()
            | (F.pmod(F.xxhash64("product_id"), F.lit(1_000_000)) < int(fraction * 1_000_000)))


def ingest_catalogue(spark: SparkSession, data_dir: str, max_image_pixels: int,
                     max_file_bytes: int, sample_fraction: float = 1.0,
                     target_file_bytes: int = 128 * 1024 * 1024,
                     after_listing: Callable[[], None] | None = None,
                     known: DataFrame | None = None) -> IngestResult:
    """Read, validate and join a catalogue folder. Images are decoded once and cached for the
    products and rejects outputs; call `result.release()` after writing them.
    `after_listing` is called once images/ is listed and before any image is read. Images
    in `known` (see `inspect_images`) are hashed, not decoded."""
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

    # Spark lists the folder when the scan is defined; then the driver lists it (every file).
    scan, base = scan_images(spark, str(images_dir))
    listed = list_image_files(str(images_dir), max_file_bytes)
    if after_listing is not None:
        after_listing()

    # One scan reads every top-level image's bytes once.
    readable = (_with_names(scan.filter(F.col("length") <= max_file_bytes), base)
                .filter(F.col("image_file").isNotNull()).filter(in_sample))
    rejected_rows = (styles_bad.filter(F.col("product_id").isNotNull())
                     .select("product_id").distinct().withColumn("_row_rejected", F.lit(True)))
    decoded = (inspect_images(readable, max_image_pixels, known)
               .join(F.broadcast(styles_ok.drop("line", "line_no")
                                 .withColumn("_has_row", F.lit(True))), "product_id", "left")
               .join(F.broadcast(rejected_rows), "product_id", "left")
               .persist(StorageLevel.MEMORY_AND_DISK))
    # Decode every image once, in parallel, before anything coalesces; the names of the files
    # read and the summary's counts of them come with it.
    names, decoded_files, read_bytes = decoded.agg(
        F.collect_list("image_file"), F.count_if("_decoded"), F.sum("length")).first()
    scanned, read_files = set(names), len(names)

    # Every listed file the scan did not return gets its reason from the driver.
    unread = []
    for f in listed:
        if f.name in scanned:
            continue
        problem = f.problem or (
            file_problem(str(root / f.name), max_file_bytes, open_it=True)
            or "could not be read by Spark (its warning in the job log names the error)")
        unread.append((f.product_id, f.name, problem, f.size,
                       f.problem not in (HIDDEN, IN_SUBFOLDER)))
    unreadable = spark.createDataFrame(
        unread, "product_id long, image_file string, _reason string, length long, "
                "_top boolean").filter(in_sample)
    # A product's files: the top-level ones, read or not; hidden and subfolder files are not.
    files = (decoded.select("image_file", "product_id", "length")
             .unionByName(unreadable.filter("_top").select("image_file", "product_id",
                                                           "length")).persist())
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
    # A good row that made no product: its image file is missing, or rejected.
    with_file = files.filter(F.col("product_id").isNotNull()).select("product_id").distinct()
    row_left = (styles_ok.join(products.select("product_id"), "product_id", "left_anti")
                .join(with_file.withColumn("_has_file", F.lit(True)), "product_id", "left")
                .select("product_id", _line_source().alias("source"),
                        F.when(F.col("_has_file"),
                               F.lit("its image file was rejected (see the images/ reject)"))
                        .otherwise(F.lit("no image file for this row")).alias("reason"),
                        F.col("line").alias("detail")))
    unreadable_bad = unreadable.select(
        "product_id", F.col("image_file").alias("source"), F.col("_reason").alias("reason"),
        F.concat(F.col("length"), F.lit(" bytes")).alias("detail"))
    rejects = (styles_bad.unionByName(unreadable_bad).unionByName(image_bad)
               .unionByName(row_left).coalesce(1).persist())

    # The bytes of `files` (the read files and the unread top-level ones), in the job that
    # counts the unread files.
    unread_files, unread_bytes = unreadable.agg(
        F.count("*"), F.sum(F.when(F.col("_top"), F.col("length")))).first()
    total_bytes = (read_bytes or 0) + (unread_bytes or 0)
    result = IngestResult(
        products=products.coalesce(max(1, -(-total_bytes // target_file_bytes))),
        rejects=rejects,
        cached=[decoded, styles, styles_ok, files, rejects])
    lines = styles.agg(F.count_if(F.col("reason") == BLANK_LINE), F.count("*")).first()
    result.blank_lines = lines[0]
    result.styles_rows = lines[1] - lines[0]
    result.image_files = read_files + unread_files
    result.decoded = decoded_files
    result.rejects_by_reason = _counts(rejects, F.regexp_replace("reason", r"[0-9]+", "N"))
    result.per_class = _counts(result.products, F.coalesce("master_category", F.lit("(none)")))
    result.ingested = sum(result.per_class.values())
    result.seconds = time.time() - started
    return result


def _counts(df: DataFrame, key) -> dict[str, int]:
    rows = df.groupBy(key.alias("key")).count().collect()
    return dict(sorted(((r["key"], r["count"]) for r in rows), key=lambda kv: -kv[1]))


def format_summary(result: IngestResult) -> str:
    lines = [
        f"styles.csv rows read : {result.styles_rows:,} "
        f"(after the header; {result.blank_lines:,} blank lines skipped)",
        f"image files read     : {result.image_files:,} (every file under images/; "
        f"{result.decoded:,} decoded, the others unchanged)",
        f"products ingested    : {result.ingested:,}",
        f"rejected             : {sum(result.rejects_by_reason.values()):,}",
    ]
    lines += [f"  {n:>8,}  {reason}" for reason, n in result.rejects_by_reason.items()]
    lines.append("per master_category:")
    lines += [f"  {n:>8,}  {cls}" for cls, n in result.per_class.items()]
    lines.append("every input accounted for: " + (
        "yes (rows + files = 2 x products + rejects)" if result.unaccounted == 0
        else f"NO: {result.unaccounted:+,} (rows + files - 2 x products - rejects)"))
    rate = result.image_files / result.seconds if result.seconds else 0.0
    lines.append(f"time                 : {result.seconds:.1f} s ({rate:,.0f} images/s)")
    return "\n".join(lines)


# --- what changed since the last ingest ---------------------------------------------------------

def catalogue_changes(products: DataFrame, previous: DataFrame) -> DataFrame:
    """(product_id, change) for every product that is `new`, `deleted`, or whose image
    (`image`: its sha256) or any other column (`labels`) differs between `previous` and
    `products`."""
    labels = [c for c in products.columns if c not in ("product_id", "image", "sha256")]
    return changes_by_key(previous, products, {"image": ["sha256"], "labels": labels})
