"""The table catalogue: declarations are enforced on write, commits name their job and run,
reads of a missing table say which job to run, SQL views are the declared tables."""
import pytest
from pyspark.sql import functions as F

from lookbook.io.catalog import TABLES, Catalog, SchemaMismatch, conform, table_spec
from lookbook.io.tables import DuplicateKeys, WriteConflict, write_table
from lookbook.pipelines import STEPS


def duplicates_frame(spark, n=3):
    return spark.range(n).select(F.col("id").alias("product_id"),
                                 (F.col("id") + 100).alias("other_id"),
                                 F.lit(0.99).cast("float").alias("score"),
                                 F.lit(False).alias("identical_bytes"))


def test_every_table_is_written_by_a_registered_step_and_keys_are_columns():
    for spec in TABLES.values():
        assert spec.written_by in STEPS, spec.name
        assert set(spec.keys) <= {c.name for c in spec.columns}, spec.name
        assert len({c.name for c in spec.columns}) == len(spec.columns), spec.name


def test_conform_orders_columns_and_refuses_any_difference(spark):
    spec = table_spec("duplicates")
    shuffled = duplicates_frame(spark).select("score", "identical_bytes", "other_id", "product_id")
    assert conform(shuffled, spec).columns == ["product_id", "other_id", "score", "identical_bytes"]
    with pytest.raises(SchemaMismatch, match="missing column identical_bytes boolean"):
        conform(duplicates_frame(spark).drop("identical_bytes"), spec)
    with pytest.raises(SchemaMismatch, match="undeclared column extra int"):
        conform(duplicates_frame(spark).withColumn("extra", F.lit(1)), spec)
    with pytest.raises(SchemaMismatch, match="column score is double, declared float"):
        conform(duplicates_frame(spark).withColumn("score", F.lit(0.5)), spec)


def test_write_checks_keys_and_records_job_and_run(spark, tmp_path):
    tables = Catalog(spark, str(tmp_path), run_id="abc123")
    assert tables.write("duplicates", duplicates_frame(spark)) == 0
    commit = tables.history("duplicates")[0]
    assert commit["lookbook.job"] == "duplicates" and commit["lookbook.run_id"] == "abc123"
    with pytest.raises(DuplicateKeys, match="product_id=0, other_id=100"):
        tables.write("duplicates", duplicates_frame(spark).unionByName(duplicates_frame(spark, 1)))
    assert tables.version("duplicates") == 0 and tables.read("duplicates").count() == 3


def test_unknown_and_missing_tables_are_clear_errors(spark, tmp_path):
    tables = Catalog(spark, str(tmp_path))
    with pytest.raises(KeyError, match="no table 'product' in the catalogue; declared: products"):
        tables.path("product")
    with pytest.raises(FileNotFoundError, match="no neighbours table .* run the neighbours job"):
        tables.read("neighbours")


def test_views_are_the_declared_tables_that_exist(spark, tmp_path):
    tables = Catalog(spark, str(tmp_path))
    tables.write("duplicates", duplicates_frame(spark))
    write_table(spark.range(3), str(tmp_path / "scratch"))  # a Delta table, but not declared
    assert tables.register_views() == ["duplicates"]
    assert spark.sql("SELECT count(*) AS n FROM duplicates WHERE score > 0.9").first()["n"] == 3


def predictions_pair(spark, ids, failed):
    predictions = spark.createDataFrame(
        [(i, "Apparel", 0.9, [0.9, 0.1], "test", "run1") for i in ids],
        table_spec("predictions").schema)
    rejects = spark.createDataFrame([(i, "predict", "bad", "run1") for i in failed],
                                    table_spec("prediction_rejects").schema)
    return {"predictions": predictions, "prediction_rejects": rejects}


def contents(tables):
    return (sorted(r[0] for r in tables.read("predictions").select("product_id").collect()),
            sorted(r[0] for r in tables.read("prediction_rejects").select("product_id").collect()))


def test_a_pair_is_seen_whole_or_not_at_all(spark, tmp_path, monkeypatch):
    """A job that dies between the commits of a pair (here a Ctrl-C right after the first)
    leaves readers on the previous pair; running it again completes the new one."""
    warehouse = str(tmp_path)
    monkeypatch.setenv("LOOKBOOK_INTERRUPT_AT", "tables.committed:predictions")
    with pytest.raises(KeyboardInterrupt):
        Catalog(spark, warehouse).write_together(predictions_pair(spark, [1, 2], [3]))
    assert not Catalog(spark, warehouse).exists("predictions")  # the first pair never finished
    monkeypatch.delenv("LOOKBOOK_INTERRUPT_AT")
    Catalog(spark, warehouse).write_together(predictions_pair(spark, [1, 2], [3]))
    assert contents(Catalog(spark, warehouse)) == ([1, 2], [3])

    monkeypatch.setenv("LOOKBOOK_INTERRUPT_AT", "tables.committed:predictions")
    with pytest.raises(KeyboardInterrupt):
        Catalog(spark, warehouse).write_together(predictions_pair(spark, [1, 2, 3], []))
    monkeypatch.delenv("LOOKBOOK_INTERRUPT_AT")
    tables = Catalog(spark, warehouse)
    assert tables.version("predictions") == 1 and tables.history("predictions")[0]["version"] == 2
    assert contents(tables) == ([1, 2], [3])  # not ([1, 2, 3], [3])

    Catalog(spark, warehouse).write_together(predictions_pair(spark, [1, 2, 3], []))
    assert contents(Catalog(spark, warehouse)) == ([1, 2, 3], [])


def test_a_pair_must_be_written_together(spark, tmp_path):
    frames = predictions_pair(spark, [1], [])
    with pytest.raises(ValueError, match="predictions is written together with prediction_rejects"):
        Catalog(spark, str(tmp_path)).write_together({"predictions": frames["predictions"]})


def test_a_step_reads_and_commits_one_snapshot(spark, tmp_path):
    """Reads repeat the version first read, and the write commits against it: a job that
    committed in between makes this write fail instead of being overwritten."""
    tables = Catalog(spark, str(tmp_path))
    Catalog(spark, str(tmp_path)).write("duplicates", duplicates_frame(spark, 2))
    assert tables.read("duplicates").count() == 2
    Catalog(spark, str(tmp_path)).write("duplicates", duplicates_frame(spark, 5))  # another job
    assert tables.read("duplicates").count() == 2
    with pytest.raises(WriteConflict):
        tables.write("duplicates", duplicates_frame(spark, 3))
    assert Catalog(spark, str(tmp_path)).read("duplicates").count() == 5
