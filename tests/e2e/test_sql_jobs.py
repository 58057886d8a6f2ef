"""The `sql` job and the JDBC endpoint (`sql_server`) as a user runs them, through
spark-submit, on the shared pipeline run's warehouse (a copy where the test writes)."""
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable

from lookbook.io.catalog import Catalog, table_spec

from helpers import SPARK_HOME, copy_tables, free_port, start, stop, submit


def delta(warehouse, name: str) -> pd.DataFrame:
    return DeltaTable(str(Path(warehouse) / name)).to_pandas()


def test_the_sql_job_fails_in_one_line(pipeline_run):
    """The query as the one positional argument; a parse error is the job's last line, exit 1,
    with neither a Python nor a Java stack trace (the result's printing: tests/spark/test_sql.py)."""
    bad = submit("sql", "SELECT * FORM products", f"warehouse={pipeline_run[1].warehouse}",
                 "spark.master=local[1]", "spark.driver_memory=1g", "tracking.enabled=false",
                 small=False)
    assert bad.returncode == 1, bad.stdout[-2000:] + bad.stderr[-2000:]
    # spark-submit passes the driver's stderr on through its stdout
    assert bad.stdout.strip().splitlines()[-1] == (
        "lookbook sql: [PARSE_SYNTAX_ERROR] Syntax error at or near 'products': extra input "
        "'products'. (at line 1, column 15: SELECT * FORM products)")
    assert "Traceback" not in bad.stderr + bad.stdout
    assert "org.apache" not in bad.stderr + bad.stdout


# --- the JDBC endpoint ----------------------------------------------------------------------

def beeline(port: int, query: str) -> list[list[str]]:
    """The rows beeline prints for `query` (a new JDBC connection, so a new session)."""
    out = subprocess.run([str(SPARK_HOME / "bin" / "beeline"), "-u",
                          f"jdbc:hive2://127.0.0.1:{port}/default", "--silent=true",
                          "--outputformat=csv2", "-e", query], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "SPARK_HOME": str(SPARK_HOME)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # With -e, beeline echoes its prompt before the header: "0: jdbc:hive2://...> n".
    lines = [re.sub(r"^\d+: jdbc:hive2://\S+> ?", "", line) for line in out.stdout.splitlines()]
    return [line.split(",") for line in lines if line.strip()]


def test_beeline_queries_the_sql_server_which_follows_new_versions(spark, pipeline_run, tmp_path):
    copy = tmp_path / "warehouse"
    copy_tables(Path(pipeline_run[1].warehouse), copy)
    shutil.rmtree(copy / "duplicates", ignore_errors=True)  # committed again below, while serving
    port = free_port()
    log = tmp_path / "server.log"
    server = start("sql_server", f"port={port}", "refresh_seconds=1", f"warehouse={copy}",
                   "spark.master=local[1]", "spark.driver_memory=1g", "tracking.enabled=false",
                   output=log)
    try:
        deadline = time.time() + 240
        while "sql_server: serving" not in log.read_text():
            assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        products = delta(copy, "products")
        assert beeline(port, "SELECT count(*) AS n FROM products") == [["n"], [str(len(products))]]
        top = beeline(port, "SELECT neighbour_id FROM neighbours WHERE product_id = "
                            f"{int(products.product_id.min())} ORDER BY rank")
        expected = (delta(copy, "neighbours").query(f"product_id == {products.product_id.min()}")
                    .sort_values("rank")["neighbour_id"])
        assert top == [["neighbour_id"]] + [[str(n)] for n in expected]
        views = {row[1] for row in beeline(port, "SHOW VIEWS")[1:]}
        assert {"products", "neighbours", "table_versions"} <= views
        assert "duplicates" not in views
        # A table committed while the server runs is served from the next refresh on.
        Catalog(spark, str(copy)).write("duplicates", spark.createDataFrame(
            [(1, 2, 0.99, False)], table_spec("duplicates").schema))
        deadline = time.time() + 60
        while "duplicates" not in log.read_text():
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert beeline(port, "SELECT product_id, other_id FROM duplicates") == [
            ["product_id", "other_id"], ["1", "2"]]
    finally:
        stop(server)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the server still listens"
