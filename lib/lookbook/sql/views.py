"""The catalogue's tables as SQL views: `products` at its current version, `products@v3` at
version 3 (`products@v:name` takes the version from the query's parameters), and
`table_versions`, every table's commits, to find the versions to compare."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from ..io.catalog import TABLES, Catalog

HISTORY_VIEW = "table_versions"
# Quoted text and comments are copied as they are; `name@v...` is only looked for outside.
_SKIPPED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|--[^\n]*|/\*.*?\*/",
                      re.DOTALL)
_VERSIONED = re.compile(r"\b([A-Za-z_]\w*)@v(\d+|:\w+)\b")


class SqlError(ValueError):
    """A query that cannot run, said in one line."""


@dataclass(frozen=True)
class VersionedQuery:
    text: str  # the query, each `name@vN` replaced by its view's name, positions unchanged
    versions: dict[str, tuple[str, int]]  # view name -> (table, version)


def versioned_view(table: str, version: int) -> str:
    return f"{table}_v{version}"


def resolve_versions(query: str, params: dict) -> VersionedQuery:
    """Replace each `table@vN` (outside strings and comments) by the view of that version.
    The replacement is padded to the same length, so that error positions Spark reports are
    positions in the query as written."""
    versions: dict[str, tuple[str, int]] = {}

    def replace(match: re.Match) -> str:
        table, spec = match.group(1).lower(), match.group(2)
        if table not in TABLES:
            raise SqlError(f"{match.group(0)}: no table {match.group(1)!r}; tables: "
                           f"{', '.join(TABLES)}")
        version = int(spec) if spec.isdigit() else _version_param(match.group(0), spec[1:], params)
        view = versioned_view(table, version)
        versions[view] = (table, version)
        return view.ljust(len(match.group(0)))

    out, at = [], 0
    for skipped in _SKIPPED.finditer(query):
        out += [_VERSIONED.sub(replace, query[at:skipped.start()]), skipped.group(0)]
        at = skipped.end()
    out.append(_VERSIONED.sub(replace, query[at:]))
    return VersionedQuery("".join(out), versions)


def _version_param(written: str, name: str, params: dict) -> int:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SqlError(f"{written}: give the version as a parameter, sql.params.{name}=N "
                       f"(a version number, see {HISTORY_VIEW})")
    return value


def register_views(spark: SparkSession, tables: Catalog,
                   versions: dict[str, tuple[str, int]] | None = None) -> list[str]:
    """Every existing table as a view at the version readers see, the given older versions,
    and `table_versions`; returns the view names."""
    names = tables.register_views()
    for view, (table, version) in (versions or {}).items():
        if not tables.exists(table):
            raise SqlError(f"{table}@v{version}: no {table} table in {tables.warehouse}")
        if not tables.readable(table, version):
            raise SqlError(f"{table}@v{version}: version {version} of {table} cannot be read "
                           f"(not committed yet, or its files were vacuumed); see {HISTORY_VIEW}")
        tables.read(table, version).createOrReplaceTempView(view)
        names.append(view)
    history_frame(spark, tables).createOrReplaceTempView(HISTORY_VIEW)
    return [*names, HISTORY_VIEW]


HISTORY_SCHEMA = T.StructType([
    T.StructField("table_name", T.StringType()),
    T.StructField("version", T.LongType()),
    T.StructField("committed_at", T.TimestampType()),
    T.StructField("operation", T.StringType()),
    T.StructField("job", T.StringType()),
    T.StructField("run_id", T.StringType()),
    T.StructField("current", T.BooleanType()),
])


def history_frame(spark: SparkSession, tables: Catalog) -> DataFrame:
    """One row per commit of every table: when, which job and MLflow run, and whether it is
    the version the unversioned view reads."""
    rows = []
    for name in TABLES:
        if not tables.on_disk(name):
            continue
        current = tables.version(name)
        for commit in tables.history(name):
            at = datetime.fromtimestamp(commit["timestamp"] / 1000, tz=UTC)
            rows.append((name, int(commit["version"]), at,
                         commit.get("operation"), commit.get("lookbook.job"),
                         commit.get("lookbook.run_id"), int(commit["version"]) == current))
    return spark.createDataFrame(rows, HISTORY_SCHEMA)
