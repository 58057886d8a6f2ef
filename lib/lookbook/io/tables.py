"""Delta tables without the delta-spark jars.

Spark writes a table's Parquet files into a fresh subfolder of the table; delta-rs then commits
exactly those files (Add actions) as one atomic transaction. Readers (Spark here, or any
Delta reader) see only committed files, so a job that dies mid-write leaves the previous version
readable, and an overwrite replaces content instead of adding duplicates.

What holds, and how:
- A commit is made against the version the job read (optimistic concurrency, no retries inside
  delta-rs): if another job committed in between, nothing is committed and `WriteConflict` says
  so; the step can then be run again on the new version. Two jobs never silently drop each
  other's rows.
- Staged files are removed after a failure only when no commit references them, decided from
  the log, not from the exception: a crash or Ctrl-C after a durable commit keeps its files.
- An append must have the table's schema (`SchemaMismatch` otherwise); an overwrite may change
  it, which is how a changed declaration migrates a table.
- Files of killed runs and of versions older than the retention are removed by `vacuum_table`.
- `merge_table` replaces rows by key and rewrites only the files holding them (copy-on-write
  at file granularity: Remove actions for those files, Add actions for their rewritten
  survivors and the new rows), so a small change writes little. Tables written with
  `cluster_by` hold consecutive key ranges per file, which keeps the files a change lands in
  few.

Spark reads a version's file list from the commit log (`DeltaTable.file_uris()`): globbing the
folder would bring back files that an overwrite removed.

Where the delta-spark jars are on the classpath, `table_engine: delta-spark` uses Spark's
native `format("delta")` behind the same functions.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from ..faults import crash_point
from . import ENGINE_CONF

WRITE_MODES = ("overwrite", "append")
LOG_DIR = "_delta_log"
_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")
log = logging.getLogger(__name__)


def table_engine(spark: SparkSession) -> str:
    return spark.conf.get(ENGINE_CONF, "delta-rs")


def table_exists(path: str) -> bool:
    return DeltaTable.is_deltatable(_uri(path))


def table_version(path: str) -> int:
    return DeltaTable(_uri(path)).version()


def version_readable(path: str, version: int) -> bool:
    """The log still has `version` and none of its files was vacuumed."""
    uri = _uri(path)
    try:
        files = _snapshot_files(uri, version)
    except Exception:  # delta-rs: version not found / log cleaned up
        return False
    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info([f"{root}/{f.path}" for f in files])
    return all(i.type == pafs.FileType.File for i in infos)


def table_history(path: str) -> list[dict[str, Any]]:
    """Commits, newest first: version, timestamp, operation and our job metadata."""
    return DeltaTable(_uri(path)).history()


class DuplicateKeys(ValueError):
    """Rows that would share a key the table declares unique; nothing was committed."""


class SchemaMismatch(ValueError):
    """Rows whose columns or types are not the table's; nothing was committed."""


class WriteConflict(RuntimeError):
    """Another job committed to the table after this one read it; nothing was committed."""

    def __init__(self, path: str, read_version: int | None, now: int, writer: str):
        read = f"version {read_version}" if read_version is not None else "no table yet"
        super().__init__(
            f"{path}: another job ({writer}) committed version {now} after this one read "
            f"{read}; nothing of this write was committed. Run the step again: it will "
            f"read the new version.")
        self.path, self.read_version, self.now = path, read_version, now


@dataclass(frozen=True)
class Written:
    """What one commit did to a table's files."""
    version: int | None  # None: nothing to commit (the table already held the content)
    files_added: int = 0
    files_removed: int = 0
    files_kept: int = 0
    bytes_written: int = 0
    rows_added: int = 0  # rows in the files added (rewritten ones' survivors included)
    rows_removed: int = 0  # rows in the files removed


def write_table(df: DataFrame, path: str, mode: str = "overwrite",
                metadata: dict[str, str] | None = None, keys: tuple[str, ...] = (),
                read_version: int | None = None, cluster_by: tuple[str, ...] = (),
                rows_per_file: int = 0) -> Written:
    """Write `df` as the new content (overwrite) or extra rows (append) of the Delta table at
    `path`, atomically, against `read_version` (default: the version when the write starts).
    With `keys`, the table's rows after the write must be unique on them, or nothing is
    committed. With `cluster_by`, files hold ranges of those columns, `rows_per_file` rows at
    most, so that a later `merge_table` of a few keys rewrites few files."""
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {WRITE_MODES}, not {mode!r}")
    spark = df.sparkSession
    if table_engine(spark) == "delta-spark":
        check_unique(_with_existing(spark, df, path, mode, keys, None), keys, path)
        df.write.format("delta").mode(mode).option("overwriteSchema", mode == "overwrite").save(path)
        version = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first()["version"]
        return Written(version)
    uri = _uri(path)
    base = read_version if read_version is not None else _current_version(uri)

    def check(staged: DataFrame, schema: Schema) -> None:
        if mode == "append" and base is not None:
            check_same_schema(schema, DeltaTable(uri, version=base).schema(), path)
        check_unique(_with_existing(spark, staged, path, mode, keys, base), keys, path)

    removed = ([] if mode == "append" or base is None
               else _snapshot_files(uri, base))
    return _stage_and_commit(clustered(df, cluster_by, rows_per_file), path, base,
                             "append" if mode == "append" else "overwrite", removed, check,
                             metadata or {}, len(removed))


def merge_table(upserts: DataFrame, removed: DataFrame | None, path: str,
                match_on: tuple[str, ...], metadata: dict[str, str] | None = None,
                keys: tuple[str, ...] = (), read_version: int | None = None,
                cluster_by: tuple[str, ...] = (), rows_per_file: int = 0) -> Written:
    """Replace rows by key, rewriting only the files that hold them: every row of the table
    whose `match_on` columns equal those of a row of `upserts` or of `removed` (null-safe) is
    removed, and `upserts` are added, in one commit against `read_version`. Files holding no
    such row are kept as they are. Nothing is committed (`Written(None)`) when no row is
    removed or added. With `keys`, the upserts must be unique on them (the table then is)."""
    spark = upserts.sparkSession
    uri = _uri(path)
    base = read_version if read_version is not None else _current_version(uri)
    if table_engine(spark) == "delta-spark" or base is None:
        # No file-level merge here: the whole new content, written once.
        current = (anti_join(read_table(spark, path, base), _matches(upserts, removed, match_on),
                             match_on) if base is not None else None)
        content = upserts if current is None else current.unionByName(upserts)
        return write_table(content, path, "overwrite", metadata, keys, base, cluster_by,
                           rows_per_file)
    gone = _matches(upserts, removed, match_on).persist()
    try:
        files = _snapshot_files(uri, base)
        if gone.isEmpty():  # it holds every upsert's key: nothing to add or remove
            return Written(None, files_kept=len(files))
        touched = _files_holding(spark, files, gone, match_on)
        if not touched and upserts.isEmpty():
            return Written(None, files_kept=len(files))
        content = (anti_join(spark.read.parquet(*[f.uri for f in touched]), gone, match_on)
                   .unionByName(upserts) if touched else upserts)

        def check(staged: DataFrame, schema: Schema) -> None:
            check_same_schema(schema, DeltaTable(uri, version=base).schema(), path)
            check_unique(upserts, keys, path)

        return _stage_and_commit(clustered(content, cluster_by, rows_per_file), path, base,
                                 "append", touched, check, metadata or {}, len(files))
    finally:
        gone.unpersist()


def commit_no_change(path: str, metadata: dict[str, str], read_version: int | None) -> int:
    """A version with the same files as `read_version` and `metadata`: how a table joins a
    batch in which only its partner changed."""
    uri = _uri(path)
    base = read_version if read_version is not None else _current_version(uri)
    _commit(uri, path, base, [], [], "append", DeltaTable(uri, version=base).schema(), metadata)
    return base + 1


def _stage_and_commit(df: DataFrame, path: str, base: int | None, mode: str,
                      removed: list[SnapshotFile], check, metadata: dict[str, str],
                      files_before: int) -> Written:
    """Spark writes `df` into a fresh folder of the table; `check(staged, schema)` vets it;
    one commit adds those files and removes `removed`. After any failure, the staged folder
    is deleted unless the log shows the commit happened."""
    spark = df.sparkSession
    uri = _uri(path)
    write_id = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = f"{uri.rstrip('/')}/{write_id}"
    fs, staging_path = pafs.FileSystem.from_uri(staging)
    table = Path(path).name
    try:
        df.write.mode("error").parquet(staging)
        files = _parquet_files(fs, staging_path)
        if not files:
            raise RuntimeError(f"Spark wrote no Parquet files to {staging}")
        crash_point("tables.staged", table)
        schema = Schema.from_arrow(pq.read_schema(files[0].path, filesystem=fs))
        # Checked on the staged files: reading back key columns is cheaper than computing
        # `df` twice.
        check(spark.read.parquet(staging), schema)
        added = [_add_action(fs, f, f"{write_id}/{Path(f.path).name}") for f in files]
        now = int(time.time() * 1000)
        removes = [RemoveAction(f.path, True, now, f.size) for f in removed]
        _commit(uri, path, base, added, removes, mode, schema, metadata)
        crash_point("tables.committed", table)
    except BaseException as exc:
        committed = _version_referencing(fs, uri, write_id, base)
        if committed is None:
            if fs.get_file_info(staging_path).type != pafs.FileType.NotFound:
                fs.delete_dir(staging_path)
            raise
        if not isinstance(exc, Exception):
            raise  # Ctrl-C after the commit: the version stands, and so do its files
        # Only a post-commit step (a checkpoint, say) failed: the version is durable.
        log.warning("%s: version %d is committed, but a step after the commit failed: %s",
                    path, committed, exc)
        return Written(committed)
    return Written(0 if base is None else base + 1, files_added=len(added),
                   files_removed=len(removed), files_kept=files_before - len(removed),
                   bytes_written=sum(a.size for a in added),
                   rows_added=sum(json.loads(a.stats)["numRecords"] for a in added),
                   rows_removed=sum(f.rows for f in removed))


@dataclass(frozen=True)
class SnapshotFile:
    path: str  # relative to the table, as the log names it
    uri: str  # what Spark reads
    size: int
    rows: int


def _snapshot_files(uri: str, version: int | None) -> list[SnapshotFile]:
    if version is None:
        return []
    table = DeltaTable(uri, version=version)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    root = uri.rstrip("/")
    return [SnapshotFile(p, f"{root}/{p}", size, rows or 0) for p, size, rows in
            zip(actions["path"], actions["size_bytes"], actions["num_records"])]


def _matches(upserts: DataFrame, removed: DataFrame | None,
             match_on: tuple[str, ...]) -> DataFrame:
    keys = upserts.select(*match_on)
    if removed is not None:
        keys = keys.unionByName(removed.select(*match_on))
    return keys.distinct()


def _files_holding(spark: SparkSession, files: list[SnapshotFile], keys: DataFrame,
                   match_on: tuple[str, ...]) -> list[SnapshotFile]:
    """The files holding a row that matches `keys`: only the key columns are read."""
    if not files:
        return []
    located = (spark.read.parquet(*[f.uri for f in files])
               .select(*match_on, F.col("_metadata.file_path").alias("_file")))
    holding = {unquote(r[0]) for r in
               semi_join(located, keys, match_on).select("_file").distinct().collect()}
    return [f for f in files if any(h.endswith("/" + f.path) for h in holding)]


def _null_safe(left: DataFrame, right: DataFrame, columns: tuple[str, ...]):
    renamed = right.select(*[F.col(c).alias(f"_m_{c}") for c in columns])
    condition = None
    for c in columns:
        term = left[c].eqNullSafe(renamed[f"_m_{c}"])
        condition = term if condition is None else condition & term
    return renamed, condition


def anti_join(left: DataFrame, right: DataFrame, columns: tuple[str, ...]) -> DataFrame:
    """Rows of `left` whose `columns` match no row of `right` (nulls match nulls)."""
    renamed, condition = _null_safe(left, right, columns)
    return left.join(renamed, condition, "left_anti")


def semi_join(left: DataFrame, right: DataFrame, columns: tuple[str, ...]) -> DataFrame:
    """Rows of `left` whose `columns` match a row of `right` (nulls match nulls)."""
    renamed, condition = _null_safe(left, right, columns)
    return left.join(renamed, condition, "left_semi")


def clustered(df: DataFrame, cluster_by: tuple[str, ...], rows_per_file: int) -> DataFrame:
    """`df` laid out in files of consecutive `cluster_by` ranges, sorted within, at most
    `rows_per_file` rows each: a change to a few keys then touches few files."""
    if not cluster_by or rows_per_file <= 0:
        return df
    n = df.count()
    files = max(1, -(-n // rows_per_file))
    return df.repartitionByRange(files, *cluster_by).sortWithinPartitions(*cluster_by)


def _commit(uri: str, path: str, base: int | None, added: list[AddAction],
            removed: list[RemoveAction], mode: str, schema: Schema,
            metadata: dict[str, str]) -> None:
    """Commit exactly on top of `base` (no retry onto a newer version), or WriteConflict.
    An overwrite removes every file of `base`; an append removes `removed`."""
    props = CommitProperties(custom_metadata=metadata, max_commit_retries=0)
    try:
        if base is None:
            create_table_with_add_actions(uri, schema, added, mode="error",
                                          commit_properties=props)
        elif mode == "overwrite":
            DeltaTable(uri, version=base).create_write_transaction(
                added, mode="overwrite", schema=schema, commit_properties=props)
        else:
            DeltaTable(uri, version=base).create_write_transaction(
                [*added, *removed], mode="append", schema=schema, commit_properties=props)
    except (CommitFailedError, DeltaError):
        now = _current_version(uri)
        if now is not None and (base is None or now > base):
            raise WriteConflict(path, base, now, _writer(uri, now)) from None
        raise


def _writer(uri: str, version: int) -> str:
    info = DeltaTable(uri, version=version).history(1)[0]
    job, run = info.get("lookbook.job"), info.get("lookbook.run_id")
    return " ".join(filter(None, [job or info.get("operation"), f"run {run}" if run else ""]))


def _version_referencing(fs: pafs.FileSystem, uri: str, write_id: str,
                         base: int | None) -> int | None:
    """The version whose commit adds files of `write_id`, if any: read from the log itself."""
    _, log_path = pafs.FileSystem.from_uri(f"{uri.rstrip('/')}/{LOG_DIR}")
    if fs.get_file_info(log_path).type == pafs.FileType.NotFound:
        return None
    first = -1 if base is None else base
    needle = f'"{write_id}/'
    for info in fs.get_file_info(pafs.FileSelector(log_path)):
        match = _COMMIT_FILE.match(info.base_name)
        if match and int(match.group(1)) > first:
            with fs.open_input_stream(info.path) as commit:
                if needle in commit.read().decode():
                    return int(match.group(1))
    return None


def _current_version(uri: str) -> int | None:
    return DeltaTable(uri).version() if DeltaTable.is_deltatable(uri) else None


def check_same_schema(staged: Schema, table: Schema, path: str) -> None:
    """Appended rows must have the table's columns and types (nullability aside)."""
    def columns(schema: Schema) -> dict[str, str]:
        return {f["name"]: json.dumps(f["type"]) for f in json.loads(schema.to_json())["fields"]}

    mine, theirs = columns(staged), columns(table)
    if mine != theirs:
        differences = [f"{n}: table {theirs.get(n, 'absent')}, appended {mine.get(n, 'absent')}"
                       for n in sorted(set(mine) | set(theirs)) if mine.get(n) != theirs.get(n)]
        raise SchemaMismatch(f"{path}: an append must have the table's schema; "
                             f"{'; '.join(differences)}; nothing was committed "
                             f"(an overwrite may change the schema)")


def check_unique(df: DataFrame, keys: tuple[str, ...], path: str) -> None:
    if not keys:
        return
    repeated = (df.groupBy(*keys).count().where(F.col("count") > 1)
                .orderBy(F.desc("count"), *keys).limit(3).collect())
    if repeated:
        shown = "; ".join(", ".join(f"{k}={r[k]}" for k in keys) + f" ({r['count']} rows)"
                          for r in repeated)
        raise DuplicateKeys(f"{path}: key ({', '.join(keys)}) is not unique, e.g. {shown}; "
                            f"nothing was committed")


def _with_existing(spark: SparkSession, df: DataFrame, path: str, mode: str,
                   keys: tuple[str, ...], base: int | None) -> DataFrame:
    """The key columns of the table as it will be after the write."""
    new = df.select(*keys)
    if mode == "append" and keys and table_exists(path):
        return new.unionByName(read_table(spark, path, base).select(*keys))
    return new


def read_table(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """The table's current (or given) version, as a Spark DataFrame."""
    if table_engine(spark) == "delta-spark":
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(path)
    uri = _uri(path)
    if not DeltaTable.is_deltatable(uri):
        raise FileNotFoundError(f"no Delta table at {path}: run the job that writes it first")
    table = DeltaTable(uri, version=version)
    files = table.file_uris()
    if not files:
        arrow_schema = pa.schema(table.schema().to_arrow())
        return spark.createDataFrame([], from_arrow_schema(arrow_schema))
    return spark.read.parquet(*files)


def vacuum_table(path: str, retention_hours: float, dry_run: bool) -> tuple[list[str], int]:
    """Remove files no version newer than `retention_hours` needs: files of overwritten
    versions and orphans (staged by killed or failed runs, Spark's `_temporary/`), each only
    once older than the retention, so that a write in flight keeps its files. Returns the
    files (relative to the table) and their bytes; with `dry_run`, only lists them. Versions
    older than the retention may no longer read afterwards."""
    uri = _uri(path)
    table = DeltaTable(uri)
    listed = table.vacuum(retention_hours=int(retention_hours), dry_run=True,
                          enforce_retention_duration=False, full=True)
    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info([f"{root}/{f}" for f in listed])
    size = sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)
    if not dry_run and listed:
        table.vacuum(retention_hours=int(retention_hours), dry_run=False,
                     enforce_retention_duration=False, full=True)
    if not dry_run:
        _remove_empty_folders(fs, root, time.time() - retention_hours * 3600)
    return sorted(listed), size


def _remove_empty_folders(fs: pafs.FileSystem, root: str, older_than: float) -> None:
    """Folders a vacuum emptied, deepest first; a folder made since the cutoff (a write that
    is starting) stays."""
    folders = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
               if i.type == pafs.FileType.Directory and LOG_DIR not in Path(i.path).parts]
    for info in sorted(folders, key=lambda i: -len(Path(i.path).parts)):
        if (not fs.get_file_info(pafs.FileSelector(info.path))
                and info.mtime is not None and info.mtime.timestamp() < older_than):
            fs.delete_dir(info.path)


def _uri(path: str) -> str:
    """delta-rs and pyarrow want absolute local paths; remote URIs pass through."""
    return path if "://" in path else str(Path(path).resolve())


def _parquet_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    return sorted((i for i in infos if i.is_file and i.base_name.endswith(".parquet")
                   and not i.base_name.startswith((".", "_"))), key=lambda i: i.path)


def _add_action(fs: pafs.FileSystem, info: pafs.FileInfo, relative_path: str) -> AddAction:
    rows = pq.ParquetFile(info.path, filesystem=fs).metadata.num_rows
    return AddAction(
        path=relative_path,
        size=info.size,
        partition_values={},
        modification_time=int(info.mtime_ns // 1_000_000),
        data_change=True,
        stats=json.dumps({"numRecords": rows}),
    )
