"""Delta tables without the delta-spark jars.

Spark writes a table's Parquet files into a fresh subfolder of the table; delta-rs then commits
exactly those files (Add actions) as one atomic transaction. Readers (Spark here, or any
Delta reader) see only committed files, so a job that dies mid-write leaves the previous version
readable, and an overwrite replaces content instead of adding duplicates.

Spark reads a version's file list from the commit log (`DeltaTable.file_uris()`): globbing the
folder would bring back files that an overwrite removed.

Where the delta-spark jars are on the classpath, `table_engine: delta-spark` uses Spark's
native `format("delta")` behind the same functions.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema
from deltalake.transaction import AddAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

ENGINE_CONF = "spark.lookbook.table_engine"
WRITE_MODES = ("overwrite", "append")


def table_engine(spark: SparkSession) -> str:
    return spark.conf.get(ENGINE_CONF, "delta-rs")


def table_exists(path: str) -> bool:
    return DeltaTable.is_deltatable(_uri(path))


def table_version(path: str) -> int:
    return DeltaTable(_uri(path)).version()


def table_history(path: str) -> list[dict[str, Any]]:
    """Commits, newest first: version, timestamp, operation and our job metadata."""
    return DeltaTable(_uri(path)).history()


class DuplicateKeys(ValueError):
    """Rows that would share a key the table declares unique; nothing was committed."""


def write_table(df: DataFrame, path: str, mode: str = "overwrite",
                metadata: dict[str, str] | None = None, keys: tuple[str, ...] = ()) -> int:
    """Write `df` as the new content (overwrite) or extra rows (append) of the Delta table at
    `path`, atomically. With `keys`, the table's rows after the write must be unique on them,
    or nothing is committed. Returns the committed version."""
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {WRITE_MODES}, not {mode!r}")
    spark = df.sparkSession
    if table_engine(spark) == "delta-spark":
        check_unique(_with_existing(spark, df, path, mode, keys), keys, path)
        df.write.format("delta").mode(mode).option("overwriteSchema", mode == "overwrite").save(path)
        return spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first()["version"]

    uri = _uri(path)
    write_id = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = f"{uri.rstrip('/')}/{write_id}"
    fs, staging_path = pafs.FileSystem.from_uri(staging)
    try:
        df.write.mode("error").parquet(staging)
        files = _parquet_files(fs, staging_path)
        if not files:
            raise RuntimeError(f"Spark wrote no Parquet files to {staging}")
        # Checked on the staged files: reading back key columns is cheaper than computing
        # `df` twice.
        staged = spark.read.parquet(staging) if keys else df
        check_unique(_with_existing(spark, staged, path, mode, keys), keys, path)
        actions = [_add_action(fs, f, f"{write_id}/{Path(f.path).name}") for f in files]
        schema = Schema.from_arrow(pq.read_schema(files[0].path, filesystem=fs))
        props = CommitProperties(custom_metadata=metadata or {})
        if DeltaTable.is_deltatable(uri):
            DeltaTable(uri).create_write_transaction(
                actions, mode=mode, schema=schema, commit_properties=props)
        else:
            create_table_with_add_actions(uri, schema, actions, mode="error",
                                          commit_properties=props)
    except BaseException:
        # Nothing references the staged files; remove them so failed runs leave no litter.
        if fs.get_file_info(staging_path).type != pafs.FileType.NotFound:
            fs.delete_dir(staging_path)
        raise
    return DeltaTable(uri).version()


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
                   keys: tuple[str, ...]) -> DataFrame:
    """The key columns of the table as it will be after the write."""
    new = df.select(*keys)
    if mode == "append" and keys and table_exists(path):
        return new.unionByName(read_table(spark, path).select(*keys))
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
