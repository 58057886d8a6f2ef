"""The Delta layer: Spark writes Parquet, delta-rs commits; both readers agree."""
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from lookbook.io.tables import (
    DuplicateKeys,
    read_table,
    table_exists,
    table_history,
    table_version,
    write_table,
)


def ids(df):
    return sorted(r[0] for r in df.select("id").collect())


def test_overwrite_append_versions_and_time_travel(spark, tmp_path):
    path = str(tmp_path / "t")
    assert not table_exists(path)
    assert write_table(spark.range(10), path) == 0
    assert write_table(spark.range(3), path, mode="overwrite") == 1
    assert write_table(spark.range(100, 102), path, mode="append") == 2
    assert ids(read_table(spark, path)) == [0, 1, 2, 100, 101]
    assert ids(read_table(spark, path, version=0)) == list(range(10))
    assert ids(read_table(spark, path, version=1)) == [0, 1, 2]
    assert table_version(path) == 2
    # The overwritten files are still on disk; the log, not a glob, decides what is read.
    on_disk = list(Path(path).rglob("*.parquet"))
    assert len(on_disk) > len(DeltaTable(path).file_uris())


def test_rewriting_same_content_is_idempotent(spark, tmp_path):
    path = str(tmp_path / "t")
    df = spark.range(20).withColumn("x", F.col("id") * 2)
    write_table(df, path)
    write_table(df, path)
    assert read_table(spark, path).count() == 20
    assert read_table(spark, path).exceptAll(df).count() == 0


def test_delta_rs_reader_sees_exactly_what_spark_wrote(spark, tmp_path):
    path = str(tmp_path / "t")
    df = spark.range(5).select(
        F.col("id").alias("product_id"),
        F.concat(F.lit("p"), F.col("id").cast("string")).alias("name"),
        F.array(F.lit(1.5).cast("float"), F.col("id").cast("float")).alias("embedding"),
        F.lit(b"\x00\xff").alias("image"),
        F.current_timestamp().alias("at"))
    write_table(df, path)
    arrow = DeltaTable(path).to_pyarrow_table().sort_by("product_id").to_pylist()
    spark_rows = [r.asDict() for r in read_table(spark, path).orderBy("product_id").collect()]
    assert [r["name"] for r in arrow] == [r["name"] for r in spark_rows]
    assert [list(r["embedding"]) for r in arrow] == [list(r["embedding"]) for r in spark_rows]
    assert all(bytes(r["image"]) == b"\x00\xff" for r in arrow)
    assert DeltaTable(path).to_pyarrow_table().num_rows == 5


def test_failed_write_leaves_previous_version_and_no_litter(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(4), path)

    @F.udf("long")
    def explode_on_three(x):
        if x == 3:
            raise ValueError("boom")
        return x

    with pytest.raises(Exception, match="boom"):
        write_table(spark.range(10).select(explode_on_three("id").alias("id")), path)
    assert table_version(path) == 0
    assert ids(read_table(spark, path)) == [0, 1, 2, 3]
    staged = [p for p in Path(path).iterdir() if p.name != "_delta_log"]
    assert len(staged) == 1  # only the committed write's folder


def test_empty_dataframe_keeps_schema(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(3).withColumn("name", F.lit("x")).limit(0), path)
    df = read_table(spark, path)
    assert df.count() == 0 and df.columns == ["id", "name"]


def test_overwrite_may_change_schema(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(3), path)
    write_table(spark.range(2).withColumn("extra", F.lit("y")), path)
    assert read_table(spark, path).columns == ["id", "extra"]


def test_history_records_job_metadata(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(1), path, metadata={"lookbook.job": "ingest"})
    latest = table_history(path)[0]
    assert latest["version"] == 0 and latest["lookbook.job"] == "ingest"


def test_keys_must_stay_unique_or_nothing_is_committed(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(5), path, keys=("id",))
    repeated = spark.range(5).unionByName(spark.range(3, 4))
    with pytest.raises(DuplicateKeys, match=r"key \(id\) is not unique, e.g. id=3 \(2 rows\)"):
        write_table(repeated, path, keys=("id",))
    with pytest.raises(DuplicateKeys, match="id=4"):  # an append that repeats a stored key
        write_table(spark.range(4, 6), path, mode="append", keys=("id",))
    assert table_version(path) == 0 and ids(read_table(spark, path)) == list(range(5))
    assert len([p for p in Path(path).iterdir() if p.name != "_delta_log"]) == 1  # no litter
    assert write_table(spark.range(5, 7), path, mode="append", keys=("id",)) == 1


def test_missing_table_is_a_clear_error(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        read_table(spark, str(tmp_path / "nothing"))


def test_bad_mode(spark, tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        write_table(spark.range(1), str(tmp_path / "t"), mode="merge")
