"""The Delta layer: Spark writes Parquet, delta-rs commits; both readers agree."""
import json
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.transaction import AddAction
from pyspark.sql import functions as F

from lookbook.io import tables as tables_module
from lookbook.io.tables import (
    DuplicateKeys,
    SchemaMismatch,
    WriteConflict,
    merge_table,
    read_table,
    table_exists,
    table_history,
    table_version,
    vacuum_table,
    write_table,
)


def ids(df):
    return sorted(r[0] for r in df.select("id").collect())


def test_overwrite_append_versions_and_time_travel(spark, tmp_path):
    path = str(tmp_path / "t")
    assert not table_exists(path)
    assert write_table(spark.range(10), path).version == 0
    assert write_table(spark.range(3), path, mode="overwrite").version == 1
    assert write_table(spark.range(100, 102), path, mode="append").version == 2
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
    assert write_table(spark.range(5, 7), path, mode="append", keys=("id",)).version == 1


def test_missing_table_is_a_clear_error(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        read_table(spark, str(tmp_path / "nothing"))


def test_bad_mode(spark, tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        write_table(spark.range(1), str(tmp_path / "t"), mode="merge")


def staged_folders(path) -> list[str]:
    return sorted(p.name for p in Path(path).iterdir() if p.name != "_delta_log")


@pytest.mark.parametrize("moment, version, content", [
    ("tables.staged", 0, range(3)),      # nothing committed: the staged files go
    ("tables.committed", 1, range(7)),   # committed: the files are the version, they stay
])
def test_a_ctrl_c_keeps_exactly_the_committed_files(spark, tmp_path, monkeypatch, moment,
                                                    version, content):
    path = str(tmp_path / "t")
    write_table(spark.range(3), path)
    monkeypatch.setenv("LOOKBOOK_INTERRUPT_AT", moment)
    with pytest.raises(KeyboardInterrupt):
        write_table(spark.range(7), path)
    monkeypatch.delenv("LOOKBOOK_INTERRUPT_AT")
    # After the commit, the old code deleted the files anyway: every later read failed
    # with FileNotFoundError.
    assert table_version(path) == version and ids(read_table(spark, path)) == list(content)
    assert len(staged_folders(path)) == version + 1


def test_a_commit_is_made_against_the_version_read(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(3), path)
    read = table_version(path)
    write_table(spark.range(100, 105), path, mode="append")  # another job, meanwhile
    with pytest.raises(WriteConflict, match="committed version 1 after this one read version 0"):
        write_table(spark.range(10, 13), path, read_version=read)
    # Nothing lost: the other job's rows are there, this write left nothing behind.
    assert ids(read_table(spark, path)) == [0, 1, 2, 100, 101, 102, 103, 104]
    assert len(staged_folders(path)) == 2
    assert write_table(spark.range(10, 13), path, read_version=1).version == 2


def test_two_first_writers_one_creates_the_other_conflicts(spark, tmp_path):
    path = str(tmp_path / "t")
    assert write_table(spark.range(2), path).version == 0
    with pytest.raises(WriteConflict, match="after this one read no table yet"):
        tables_module._commit(path, path, None, [], [], "overwrite",
                              DeltaTable(path).schema(), {})
    assert ids(read_table(spark, path)) == [0, 1]


def test_concurrent_appends_lose_nothing_and_each_returns_its_own_version(spark, tmp_path):
    """Two writers in threads of one session, really at once: each retries on conflict (as
    the runner does for a step) and every returned version is the commit it made."""
    path = str(tmp_path / "t")
    write_table(spark.range(0), path)
    made: dict[str, list[int]] = {"a": [], "b": []}

    def writer(tag: str, start: int):
        for batch in range(3):
            rows = spark.range(start + 10 * batch, start + 10 * batch + 4)
            while True:
                try:
                    made[tag].append(write_table(rows, path, mode="append",
                                                 metadata={"writer": f"{tag}{batch}"}).version)
                    break
                except WriteConflict:
                    continue

    threads = [threading.Thread(target=writer, args=("a", 1000)),
               threading.Thread(target=writer, args=("b", 2000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = sorted(s + 10 * b + i for s in (1000, 2000) for b in range(3) for i in range(4))
    assert ids(read_table(spark, path)) == expected
    by_version = {c["version"]: c.get("writer") for c in table_history(path)}
    for tag, versions in made.items():
        assert [by_version[v] for v in versions] == [f"{tag}{b}" for b in range(3)]


def test_an_append_with_another_schema_is_refused(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(3), path)
    with pytest.raises(SchemaMismatch, match="id: table \"long\", appended \"string\""):
        write_table(spark.range(2).select(F.col("id").cast("string").alias("id")), path,
                    mode="append")
    with pytest.raises(SchemaMismatch, match="extra: table absent"):
        write_table(spark.range(2).withColumn("extra", F.lit(1)), path, mode="append")
    assert table_version(path) == 0 and ids(read_table(spark, path)) == [0, 1, 2]
    assert write_table(spark.range(5, 6), path, mode="append").version == 1  # same schema: fine


def test_vacuum_removes_old_versions_and_orphans_but_keeps_the_current_one(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(3), path)
    write_table(spark.range(5), path)
    # What a killed job leaves: a staged folder nothing references, Spark's _temporary.
    orphan = Path(path) / "part-killed" / "_temporary" / "0"
    orphan.mkdir(parents=True)
    shutil.copy(next((Path(path)).glob("part-*/*.parquet")), orphan / "part-0.parquet")
    before = {p.relative_to(path).as_posix() for p in Path(path).rglob("*.parquet")}

    assert vacuum_table(path, retention_hours=24, dry_run=False) == ([], 0)  # all too young
    listed, size = vacuum_table(path, retention_hours=0, dry_run=True)
    current = {f.split(path + "/", 1)[1] for f in DeltaTable(path).file_uris()}
    data_files = {f for f in listed if f.endswith(".parquet") and "/." not in f}  # not .crc
    assert data_files == before - current and size > 0
    assert "part-killed/_temporary/0/part-0.parquet" in listed
    assert {p.relative_to(path).as_posix() for p in Path(path).rglob("*.parquet")} == before

    assert vacuum_table(path, retention_hours=0, dry_run=False)[0] == listed
    assert {p.relative_to(path).as_posix() for p in Path(path).rglob("*.parquet")} == current
    assert len(staged_folders(path)) == 1  # emptied folders go too
    assert ids(read_table(spark, path)) == list(range(5))


def test_a_failed_checkpoint_after_the_100th_commit_loses_nothing(spark, tmp_path, caplog):
    """delta-rs writes a checkpoint after version 99, inside the commit call: when that
    fails (here `_last_checkpoint` cannot be replaced), the commit is already durable."""
    path = str(tmp_path / "t")
    write_table(spark.range(1), path)
    table = DeltaTable(path)
    first = pa.table(table.get_add_actions(flatten=True)).to_pylist()[0]
    same_file = AddAction(first["path"], first["size_bytes"], {}, 0, True,
                          json.dumps({"numRecords": 1}))
    for _ in range(98):  # versions 1..98, cheaply: the same file committed again
        DeltaTable(path).create_write_transaction([same_file], mode="overwrite",
                                                  schema=table.schema())
    (Path(path) / "_delta_log" / "_last_checkpoint").mkdir()
    assert write_table(spark.range(10, 12), path).version == 99
    assert "version 99 is committed, but a step after the commit failed" in caplog.text
    assert ids(read_table(spark, path)) == [10, 11]


# --- merge by key: only files holding a changed row are rewritten -----------------------------

def table_files(path) -> dict[str, tuple[int, int]]:
    """Each file of the current version: (smallest, largest) id, read from the file itself."""
    import pyarrow.parquet as pq

    out = {}
    for uri in DeltaTable(path).file_uris():
        column = pq.read_table(uri, columns=["id"])["id"].to_pylist()
        out[Path(uri).relative_to(Path(path).resolve()).as_posix()] = (min(column), max(column))
    return out


def rows(df) -> dict[int, str]:
    return {r["id"]: r["value"] for r in df.collect()}


def test_merge_rewrites_only_the_files_holding_changed_keys(spark, tmp_path):
    path = str(tmp_path / "t")
    start = spark.range(1000).select("id", F.concat(F.lit("v"), "id").alias("value"))
    write_table(start, path, keys=("id",), cluster_by=("id",), rows_per_file=100)
    before = table_files(path)
    assert len(before) == 10  # ranges of consecutive ids, 100 rows each
    ranges = sorted(before.values())
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))

    upserts = spark.createDataFrame([(5, "changed"), (7, "changed"), (5000, "new")],
                                    "id long, value string")
    removed = spark.createDataFrame([(950,), (123456,)], "id long")  # one absent: no error
    written = merge_table(upserts, removed, path, ("id",), {"lookbook.job": "test"}, ("id",),
                          cluster_by=("id",), rows_per_file=100)
    assert written.version == 1 and written.files_removed == 2 and written.files_kept == 8
    expected = {i: f"v{i}" for i in range(1000) if i != 950} | {5: "changed", 7: "changed",
                                                                  5000: "new"}
    assert rows(read_table(spark, path)) == expected
    after = table_files(path)
    kept = {f for f, r in before.items() if not (r[0] <= 5 <= r[1] or r[0] <= 950 <= r[1])}
    assert len(kept) == 8 and kept <= set(after)  # the very same files
    assert written.bytes_written == sum((Path(path) / f).stat().st_size
                                        for f in set(after) - kept)
    assert rows(read_table(spark, path, version=0)) == {i: f"v{i}" for i in range(1000)}
    assert table_history(path)[0]["lookbook.job"] == "test"


def test_merge_with_nothing_to_change_commits_nothing(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.range(10).select("id", F.lit("v").alias("value")), path)
    empty = spark.createDataFrame([], "id long, value string")
    written = merge_table(empty, spark.createDataFrame([(99,)], "id long"), path, ("id",))
    assert written.version is None and written.files_kept >= 1
    assert table_version(path) == 0


def test_merge_matches_nulls_and_checks_keys_and_conflicts(spark, tmp_path):
    path = str(tmp_path / "t")
    write_table(spark.createDataFrame([(None, "a"), (1, "b"), (2, "c")], "id long, value string"),
                path)
    # Rows without an id (a reject whose file name is no id) are matched like any other.
    merge_table(spark.createDataFrame([(None, "z")], "id long, value string"), None, path,
                ("id",))
    assert sorted(read_table(spark, path).collect(), key=str) == sorted(
        [(None, "z"), (1, "b"), (2, "c")], key=str)
    with pytest.raises(DuplicateKeys):
        merge_table(spark.createDataFrame([(3, "x"), (3, "y")], "id long, value string"), None,
                    path, ("id",), keys=("id",))
    with pytest.raises(WriteConflict):  # computed from version 0; version 1 is newer
        merge_table(spark.createDataFrame([(4, "x")], "id long, value string"), None, path,
                    ("id",), read_version=0)
    with pytest.raises(SchemaMismatch):
        merge_table(spark.createDataFrame([(4, 1)], "id long, value long"), None, path, ("id",))
    assert table_version(path) == 1
