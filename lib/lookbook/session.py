"""The one SparkSession factory, and the spark-submit options derived from the same config."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .config import SparkSettings, TensorflowSettings
from .io import ENGINE_CONF

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_conf(spark: SparkSettings, tf: TensorflowSettings,
               table_engine: str = "delta-rs") -> dict[str, str]:
    """Spark conf entries from the config; explicit `spark.conf` entries win."""
    threads = str(tf.intra_op_threads)
    conf = {
        ENGINE_CONF: table_engine,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(spark.arrow_batch_rows),
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        # A catalogue is many small files: Spark's default 4 MiB "open cost" per file would
        # give ~30 images per task and thousands of tasks.
        "spark.sql.files.maxPartitionBytes": str(spark.partition_bytes),
        "spark.sql.files.openCostInBytes": str(spark.file_open_cost_bytes),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        # delta-rs and Spark must agree on timestamp encoding (INT96 is not Delta).
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.session.timeZone": "UTC",
        # Tables are committed by delta-rs from the files themselves; no _SUCCESS markers needed.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.ui.showConsoleProgress": "true",
        # Each Python worker that imports TensorFlow gets a thread cap, so N workers do not
        # oversubscribe the cores.
        "spark.executorEnv.TF_NUM_INTRAOP_THREADS": threads,
        "spark.executorEnv.TF_NUM_INTEROP_THREADS": str(tf.inter_op_threads),
        "spark.executorEnv.OMP_NUM_THREADS": threads,
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        "spark.python.worker.reuse": "true",
        # Only the Thrift server (`sql_server`) reads it: every JDBC connection uses the
        # server's session, so each sees the tables' views.
        "spark.sql.hive.thriftServer.singleSession": "true",
    }
    if spark.driver_memory:
        conf["spark.driver.memory"] = spark.driver_memory
    conf.update(spark.conf)
    return conf


def submit_options(spark: SparkSettings, tf: TensorflowSettings,
                   table_engine: str = "delta-rs") -> list[str]:
    """Arguments for Spark's own spark-submit, so that a cluster run uses the same config."""
    args = ["--name", spark.app_name]
    if spark.master:
        args += ["--master", spark.master]
    for key, value in spark_conf(spark, tf, table_engine).items():
        args += ["--conf", f"{key}={value}"]
    return args


def build_spark(spark: SparkSettings, tf: TensorflowSettings,
                table_engine: str = "delta-rs") -> SparkSession:
    """Get or create the session. Under spark-submit the conf is already applied; in tests,
    notebooks and plain `python`, this applies it."""
    if spark.master and spark.master.startswith("local"):
        # Laptops on Wi-Fi/VPN often resolve their hostname to an unreachable address.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers must run the driver's interpreter (the venv with our dependencies).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession  # here: spark-submit.sh's options need no Spark

    builder = SparkSession.builder.appName(spark.app_name)
    if spark.master:
        builder = builder.master(spark.master)
    for key, value in spark_conf(spark, tf, table_engine).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
