"""The table catalogue: declarations are enforced on write, commits name their job and run,
reads of a missing table say which job to run, SQL views are the declared tables."""
import pytest
from pyspark.sql import functions as F

from lookbook.io.catalog import TABLES, Catalog, SchemaMismatch, conform, table_spec
from lookbook.io.tables import DuplicateKeys, write_table
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
