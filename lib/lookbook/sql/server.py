"""Spark's Thrift JDBC/ODBC server (the HiveServer2 protocol: beeline, BI tools, ODBC
drivers) inside this driver, serving the session's views to every connection."""
from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

from pyspark.sql import SparkSession

from ..io.catalog import TABLES, Catalog
from .views import SqlError, register_views

log = logging.getLogger(__name__)
# A static conf (set when the session is built, see session.spark_conf): every JDBC
# connection uses the server's session, so it sees the views registered here.
SINGLE_SESSION = "spark.sql.hive.thriftServer.singleSession"


def check_port_free(host: str, port: int) -> None:
    """Fail with the port in the message before Spark starts binding (its own failure is a
    stack trace in the log and a server that never answers)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SqlError(f"cannot serve on {host}:{port}: {exc.strerror}; choose another "
                           f"port with sql_server.port=N") from None


def start_thrift_server(spark: SparkSession, host: str, port: int, scratch: Path):
    """Start the server on host:port; returns the JVM server object (`.stop()`)."""
    if spark.conf.get(SINGLE_SESSION, "false") != "true":
        raise SqlError(f"{SINGLE_SESSION} must be true for connections to see the tables "
                       f"(lookbook's session sets it; a session built elsewhere must too)")
    check_port_free(host, port)
    jvm = spark._jvm
    scratch.mkdir(parents=True, exist_ok=True)
    # The embedded Hive client writes derby.log and scratch files into the working
    # directory unless told otherwise.
    jvm.java.lang.System.setProperty("derby.stream.error.file", str(scratch / "derby.log"))
    for key, value in {"hive.server2.thrift.bind.host": host,
                       "hive.server2.thrift.port": str(port),
                       "hive.exec.scratchdir": str(scratch / "scratch"),
                       "hive.exec.local.scratchdir": str(scratch / "local")}.items():
        spark.conf.set(key, value)
    return jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
        spark._jsparkSession.sqlContext())


def wait_until_listening(host: str, port: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SqlError(f"the SQL server did not listen on {host}:{port} within {timeout:.0f} s "
                   f"(see the Spark log above)")


class ViewRefresher(threading.Thread):
    """Moves the views to the tables' newest complete versions every `seconds`, so the
    server keeps answering from the current tables after a nightly refresh; queries already
    running keep the version they started with."""

    def __init__(self, spark: SparkSession, warehouse: str, products_per_file: int,
                 seconds: float, stop: threading.Event):
        super().__init__(name="lookbook-view-refresher", daemon=True)
        self.spark, self.warehouse, self.products_per_file = spark, warehouse, products_per_file
        self.seconds, self.stop = seconds, stop
        self.versions = versions_of(self.catalog())
        self.refreshes = 0

    def catalog(self) -> Catalog:
        return Catalog(self.spark, self.warehouse, products_per_file=self.products_per_file)

    def run(self) -> None:
        while not self.stop.wait(self.seconds):
            try:
                tables = self.catalog()
                now = versions_of(tables)
                if now != self.versions:
                    register_views(self.spark, tables)
                    changed = sorted(n for n in now if self.versions.get(n) != now[n])
                    log.info("sql_server: views moved to %s",
                             ", ".join(f"{n} v{now[n]}" for n in changed))
                    self.versions = now
                    self.refreshes += 1
            except Exception as exc:  # a table unreachable for a moment: keep serving
                log.warning("sql_server: views not refreshed: %s", exc)


def versions_of(tables: Catalog) -> dict[str, int]:
    """The version each existing table's view reads."""
    return {name: tables.version(name) for name in TABLES if tables.exists(name)}
