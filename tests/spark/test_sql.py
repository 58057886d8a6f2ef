"""SQL over the catalogue in-process: views by name and version, the example queries in
conf/queries (each checked against pandas on the Delta tables), results as text and files,
errors as one line (tests/e2e/test_sql_jobs.py: the `sql` job and the JDBC server)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from lookbook.io.catalog import Catalog, table_spec
from lookbook.pipelines.neighbour_steps import neighbours
from lookbook.pipelines.sql_steps import sql
from lookbook.sql.results import aligned_table, cell_text
from lookbook.sql.views import SqlError, resolve_versions

from helpers import REPO, config_for, copy_tables

QUERIES = REPO / "conf" / "queries"


def delta(warehouse, name: str, version: int | None = None) -> pd.DataFrame:
    return DeltaTable(str(Path(warehouse) / name), version=version).to_pandas()


# --- pure helpers ---------------------------------------------------------------------------

def test_versions_are_replaced_outside_strings_and_comments_keeping_positions():
    query = ("SELECT 'products@v1', `neighbours@v2` -- neighbours@v3\n"
             "FROM neighbours@v4 a JOIN Products@v:then b /* features@v5 */ ON a.x = b.x")
    out = resolve_versions(query, {"then": 12})
    assert out.versions == {"neighbours_v4": ("neighbours", 4), "products_v12": ("products", 12)}
    assert len(out.text) == len(query)
    assert "FROM neighbours_v4 a JOIN products_v12    b /* features@v5 */" in out.text
    assert out.text.startswith("SELECT 'products@v1', `neighbours@v2` -- neighbours@v3\n")


@pytest.mark.parametrize("query, params, message", [
    ("SELECT * FROM produce@v1", {}, "no table 'produce'"),
    ("SELECT * FROM products@v:old", {}, "sql.params.old=N"),
    ("SELECT * FROM products@v:old", {"old": "x"}, "sql.params.old=N"),
])
def test_bad_versions_are_clear_errors(query, params, message):
    with pytest.raises(SqlError, match=message):
        resolve_versions(query, params)


def test_cells_print_short_and_columns_align():
    frame = pd.DataFrame({"id": [1, 22], "name": ["a", None], "image": [b"\xff" * 2048, b""],
                          "embedding": [np.arange(1024, dtype=np.float32), np.array([0.5])]})
    text = aligned_table(frame).splitlines()
    assert text[0].split() == ["id", "name", "image", "embedding"]
    assert set(text[1]) == {"-", " "}
    assert text[2].startswith(" 1  a     <2,048 bytes>  [0, 1, 2, 3, ... 1024 values]")
    assert text[3].startswith("22  NULL  <0 bytes>")
    assert cell_text("x" * 100).endswith("…") and len(cell_text("x" * 100)) == 60


# --- queries on a warehouse with two neighbours versions and predictions ---------------------

@pytest.fixture(scope="module")
def warehouse(spark, featurized, tmp_path_factory):
    """A copy of the shared warehouse with neighbours v0 (any candidate) and v1 (same gender
    only), and a predictions table written directly: right for most products, every 7th
    product predicted as another class; a third of them in the test split."""
    path = tmp_path_factory.mktemp("sql") / "warehouse"
    copy_tables(Path(featurized.warehouse), path)
    cfg = config_for(Path(featurized.data_dir), path, Path(featurized.featurize.weights_cache))
    neighbours(spark, cfg)
    neighbours(spark, config_for(Path(featurized.data_dir), path,
                                 Path(featurized.featurize.weights_cache),
                                 "neighbours.same=[gender]"))
    products = delta(path, "products")[["product_id", "master_category"]]
    classes = sorted(products["master_category"].unique())
    predicted = [classes[(classes.index(c) + 1) % len(classes)] if pid % 7 == 0 else c
                 for pid, c in zip(products["product_id"], products["master_category"])]
    predictions = pd.DataFrame({
        "product_id": products["product_id"], "predicted": predicted,
        "probability": 0.9, "probabilities": [[0.9]] * len(products),
        "split": ["test" if pid % 3 == 0 else "train" for pid in products["product_id"]],
        "run_id": "test"})
    Catalog(spark, str(path)).write_together({
        "predictions": spark.createDataFrame(predictions, table_spec("predictions").schema),
        "prediction_rejects": spark.createDataFrame([], table_spec("prediction_rejects").schema)})
    return cfg


def query_file(name: str) -> str:
    return f"sql.file={QUERIES / name}.sql"


def run_query(spark, cfg, tmp_path, *overrides):
    out = tmp_path / "result.parquet"
    settings = config_for(Path(cfg.data_dir), Path(cfg.warehouse),
                          Path(cfg.featurize.weights_cache), f"sql.out={out}", *overrides)
    result = sql(spark, settings)
    return pd.read_parquet(out), result


def joined(warehouse, version=None) -> pd.DataFrame:
    """neighbours with the product's and the neighbour's products rows (p_ and n_ columns)."""
    products = delta(warehouse, "products").drop(columns=["image"])
    table = delta(warehouse, "neighbours", version)
    return (table.merge(products.add_prefix("p_"), left_on="product_id", right_on="p_product_id")
                 .merge(products.add_prefix("n_"), left_on="neighbour_id",
                        right_on="n_product_id"))


def test_product_neighbours(spark, warehouse, tmp_path):
    pid = int(delta(warehouse.warehouse, "neighbours")["product_id"].min())
    got, result = run_query(spark, warehouse, tmp_path, query_file("product_neighbours"),
                            f"sql.params.product_id={pid}")
    expected = joined(warehouse.warehouse).query("product_id == @pid").sort_values("rank")
    assert got["rank"].tolist() == [1, 2, 3, 4, 5]
    assert got["neighbour_id"].tolist() == expected["neighbour_id"].tolist()
    assert got["display_name"].tolist() == expected["n_display_name"].tolist()
    assert got["article_type"].tolist() == expected["n_article_type"].tolist()
    np.testing.assert_allclose(got["score"], expected["score"].round(4), atol=1e-4)
    assert result.summary == "5 rows saved to " + str(tmp_path / "result.parquet")


def test_cross_category_neighbours(spark, warehouse, tmp_path):
    got, _ = run_query(spark, warehouse, tmp_path,
                       query_file("cross_category_neighbours"))
    table = joined(warehouse.warehouse)
    expected = table[table["p_master_category"] != table["n_master_category"]]
    assert len(expected) > 0
    assert (sorted(zip(got["product_id"], got["rank"]))
            == sorted(zip(expected["product_id"], expected["rank"])))
    assert (got["product_category"] != got["neighbour_category"]).all()
    assert (np.diff(got["score"]) <= 0).all()


def test_central_products(spark, warehouse, tmp_path):
    got, _ = run_query(spark, warehouse, tmp_path, query_file("central_products"))
    counts = delta(warehouse.warehouse, "neighbours")["neighbour_id"].value_counts()
    expected = (counts.rename("n").reset_index().sort_values(["n", "neighbour_id"],
                                                             ascending=[False, True]).head(20))
    assert got["product_id"].tolist() == expected["neighbour_id"].tolist()
    assert got["times_a_neighbour"].tolist() == expected["n"].tolist()


def test_classifier_precision(spark, warehouse, tmp_path):
    got = run_query(spark, warehouse, tmp_path,
                    query_file("classifier_precision"))[0].set_index("class")
    test = (delta(warehouse.warehouse, "predictions").query("split == 'test'")
            .merge(delta(warehouse.warehouse, "products"), on="product_id"))
    for cls in set(test["master_category"]) | set(test["predicted"]):
        predicted = test["predicted"] == cls
        actual = test["master_category"] == cls
        correct = (predicted & actual).sum()
        assert got.loc[cls, "support"] == actual.sum()
        assert got.loc[cls, "predicted_as"] == predicted.sum()
        if predicted.sum():
            assert got.loc[cls, "precision"] == pytest.approx(correct / predicted.sum(), abs=1e-4)
        if actual.sum():
            assert got.loc[cls, "recall"] == pytest.approx(correct / actual.sum(), abs=1e-4)
    assert (got["precision"].dropna() < 1).any()  # the flipped predictions show


def test_neighbour_precision(spark, warehouse, tmp_path):
    got = run_query(spark, warehouse, tmp_path,
                    query_file("neighbour_precision"))[0].set_index("class")
    table = joined(warehouse.warehouse)
    table["same"] = table["p_master_category"] == table["n_master_category"]
    table["same_type"] = table["p_article_type"] == table["n_article_type"]
    expected = table.groupby("p_master_category")[["same", "same_type"]].mean()
    for cls, row in expected.iterrows():
        assert got.loc[cls, "same_category"] == pytest.approx(row["same"], abs=1e-4)
        assert got.loc[cls, "same_article_type"] == pytest.approx(row["same_type"], abs=1e-4)


def test_neighbour_changes_between_two_versions(spark, warehouse, tmp_path):
    before, after = delta(warehouse.warehouse, "neighbours", 0), delta(warehouse.warehouse,
                                                                       "neighbours", 1)
    lists = {v: t.sort_values("rank").groupby("product_id")["neighbour_id"].apply(list)
             for v, t in ((0, before), (1, after))}
    pid = next(p for p in lists[0].index if lists[0][p] != lists[1][p])
    got, _ = run_query(spark, warehouse, tmp_path, query_file("neighbour_changes"),
                       f"sql.params.product_id={pid}", "sql.params.before=0",
                       "sql.params.after=1")
    old, new = lists[0][pid], lists[1][pid]
    expected = {n: ("joined" if n not in old else "left" if n not in new
                    else "same" if old.index(n) == new.index(n) else "moved")
                for n in set(old) | set(new)}
    assert dict(zip(got["neighbour_id"], got["change"])) == expected
    assert got.query("change != 'left'")["rank_after"].tolist() == [1, 2, 3, 4, 5]


def test_older_versions_and_the_version_list_are_views(spark, warehouse, tmp_path):
    got, _ = run_query(spark, warehouse, tmp_path,
                       "sql.query=SELECT table_name, version, job, current FROM table_versions "
                       "WHERE table_name = 'neighbours' ORDER BY version")
    assert got["version"].tolist() == [0, 1]
    assert got["job"].tolist() == ["neighbours", "neighbours"]
    assert got["current"].tolist() == [False, True]
    got, _ = run_query(spark, warehouse, tmp_path, "sql.query=SELECT a.product_id, a.rank, "
                       "a.neighbour_id AS old, b.neighbour_id AS new FROM neighbours@v0 a "
                       "JOIN neighbours b USING (product_id, rank)")
    before, after = delta(warehouse.warehouse, "neighbours", 0), delta(warehouse.warehouse,
                                                                       "neighbours")
    merged = before.merge(after, on=["product_id", "rank"])
    assert sorted(zip(got["product_id"], got["rank"], got["old"], got["new"])) == sorted(
        zip(merged["product_id"], merged["rank"], merged["neighbour_id_x"],
            merged["neighbour_id_y"]))


@pytest.mark.parametrize("query, message", [
    ("SELECT * FORM products", "[PARSE_SYNTAX_ERROR] Syntax error at or near 'products': "
                               "extra input 'products'. (at line 1, column 15: SELECT * FORM "
                               "products)"),
    ("SELECT product_id,\n  nope\nFROM neighbours@v0",
     "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function parameter with name "
     "`nope` cannot be resolved."),
    ("SELECT * FROM neighbours@v99", "version 99 of neighbours cannot be read"),
    ("SELECT * FROM nowhere", "[TABLE_OR_VIEW_NOT_FOUND] The table or view `nowhere` cannot "
                              "be found."),
])
def test_sql_errors_are_one_line_with_the_position(spark, warehouse, tmp_path, query, message):
    with pytest.raises(SqlError) as error:
        run_query(spark, warehouse, tmp_path, f"sql.query={query}")
    text = str(error.value)
    assert message in text
    assert "\n" not in text and "org.apache" not in text and "SQLSTATE" not in text
    if "nope" in query:
        assert text.endswith("(at line 2, column 3: nope)")


def test_a_csv_result_holds_every_row_and_nested_values_as_json(spark, warehouse, tmp_path):
    out = tmp_path / "features.csv"
    cfg = config_for(Path(warehouse.data_dir), Path(warehouse.warehouse),
                     Path(warehouse.featurize.weights_cache), f"sql.out={out}", "sql.max_rows=3",
                     "sql.query=SELECT product_id, embedding, image FROM features "
                     "JOIN products USING (product_id) ORDER BY product_id")
    result = sql(spark, cfg)
    saved = pd.read_csv(out)
    features = delta(warehouse.warehouse, "features").sort_values("product_id")
    assert saved["product_id"].tolist() == features["product_id"].tolist()
    first = np.array(json.loads(saved["embedding"][0]), dtype=np.float32)
    np.testing.assert_array_equal(first, features["embedding"].iloc[0])
    images = delta(warehouse.warehouse, "products").set_index("product_id")["image"]
    assert base64.b64decode(saved["image"][0]) == images[saved["product_id"][0]]
    assert result.details.count("\n") == 1 + 3  # header, rule, the first 3 rows
    assert f"{len(saved):,} rows saved to {out}" == result.summary
