"""SQL for analysts: `sql` runs one query over the catalogue's tables, `sql_server` serves
them over JDBC/ODBC until stopped."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import yaml
from pyspark.errors.exceptions.captured import CapturedException
from pyspark.sql import SparkSession

from ..config import Config, SqlSettings
from ..io.catalog import Table
from ..sql.errors import error_line, quiet_query_error_log
from ..sql.results import aligned_table, first_rows, save_result
from ..sql.server import ViewRefresher, start_thrift_server, wait_until_listening
from ..sql.views import SqlError, register_views, resolve_versions
from .base import StepResult, catalog, step

log = logging.getLogger(__name__)


def query_text(settings: SqlSettings) -> str:
    if bool(settings.query.strip()) == bool(settings.file):
        raise SqlError('sql needs exactly one query: ./spark-submit.sh sql "SELECT ..." or '
                       "sql file=query.sql")
    if not settings.file:
        return settings.query
    path = Path(settings.file)
    if not path.is_file():
        raise SqlError(f"file={settings.file}: no such file")
    return path.read_text()


def query_params(raw: dict[str, str]) -> dict:
    """`sql.params.NAME=VALUE` as typed SQL literals: 15970 a number, true a boolean,
    anything else a string."""
    typed = {name: yaml.safe_load(value) if value else "" for name, value in raw.items()}
    return {name: value if isinstance(value, (int, float, bool, str)) else raw[name]
            for name, value in typed.items()}


@step(reads=tuple(Table), writes=(), settings=("sql",))
def sql(spark: SparkSession, cfg: Config) -> StepResult:
    """Run one query; every table is a view by its name, `name@vN` an older version."""
    text, params = query_text(cfg.sql), query_params(cfg.sql.params)
    versioned = resolve_versions(text, params)
    register_views(spark, catalog(spark, cfg), versioned.versions)
    written = {view: f"{table}@v{version}" for view, (table, version) in versioned.versions.items()}
    quiet_query_error_log()
    try:
        result = spark.sql(versioned.text, args=params or None)
        saved = save_result(result, cfg.sql.out) if cfg.sql.out else None
        shown, more = first_rows(result, cfg.sql.max_rows)
    except CapturedException as exc:
        raise SqlError(error_line(exc, text, written)) from None
    if saved is not None:
        summary = f"{saved:,} rows saved to {cfg.sql.out}"
    elif more:
        summary = f"the first {len(shown):,} rows of more (out=FILE.csv or .parquet saves all)"
    else:
        summary = f"{len(shown):,} rows"
    return StepResult(summary, details=aligned_table(shown),
                      params={"sql.text": text, "sql.params": params},
                      metrics={"rows_shown": len(shown), **({"rows_saved": saved}
                                                          if saved is not None else {})})


@step(reads=tuple(Table), writes=(), settings=("sql_server",))
def sql_server(spark: SparkSession, cfg: Config) -> StepResult:
    """Serve every table over JDBC/ODBC until SIGTERM or Ctrl-C."""
    s = cfg.sql_server
    tables = catalog(spark, cfg)
    views = register_views(spark, tables)
    stop = threading.Event()
    refresher = ViewRefresher(spark, cfg.warehouse, cfg.tables.products_per_file,
                              s.refresh_seconds, stop)
    server = start_thrift_server(spark, s.host, s.port, Path(cfg.warehouse) / "_sql_server")
    try:
        wait_until_listening(s.host, s.port)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        refresher.start()
        log.info("sql_server: serving %s at jdbc:hive2://%s:%d/default (Ctrl-C or SIGTERM "
                 "stops it)", ", ".join(views), s.host, s.port)
        stop.wait()
    finally:
        stop.set()
        server.stop()
    return StepResult(f"served {len(views)} views on {s.host}:{s.port}; moved them to newer "
                      f"versions {refresher.refreshes} times",
                      params={"host": s.host, "port": s.port})
