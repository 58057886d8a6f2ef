"""Ingest on a synthetic catalogue with every kind of bad input, and on a slice of the real one."""
import hashlib
import os

import pytest
from pyspark.sql import functions as F

from lookbook.config import load_config
from lookbook.io.catalog import Catalog
from lookbook.io.ingest import ingest_catalogue, read_styles, sample_filter
from lookbook.pipelines.catalogue_steps import ingest as ingest_step

MALFORMED_REAL_IDS = [3413, 3418, 3428, 4854, 23100, 23101, 23103, 23107, 23108, 23109, 23110,
                      23111, 23112, 23114, 23115, 23116, 23117, 23118, 23124, 23127, 44065, 59768]


def test_good_products_all_ingested_and_nothing_else(bad_result, bad_catalogue):
    _, made = bad_catalogue
    got = sorted(r[0] for r in bad_result.products.select("product_id").collect())
    assert got == made["product_ids"]
    assert bad_result.ingested == len(made["product_ids"])


def test_every_bad_input_is_rejected_with_its_reason(bad_result, bad_catalogue):
    _, made = bad_catalogue
    rejects = [r.asDict() for r in bad_result.rejects.collect()]
    for key, fragment in made["rejects"].items():
        kind, value = key.split(":", 1) if ":" in key else ("source", key)
        if kind == "id":
            hits = [r for r in rejects if r["product_id"] == int(value)]
        elif kind == "line":
            hits = [r for r in rejects if (r["detail"] or "").startswith(value + ",")]
        else:
            hits = [r for r in rejects if r["source"] == value]
        assert hits, f"no reject for {key}"
        assert any(fragment in r["reason"] for r in hits), (key, hits)


def test_no_input_is_silently_lost(bad_result, bad_catalogue):
    root, _ = bad_catalogue
    product_ids = {r[0] for r in bad_result.products.select("product_id").collect()}
    rejected = {r[0] for r in bad_result.rejects.select("product_id").collect()}
    line_ids = {int(line.split(",")[0]) for line in (root / "styles.csv").read_text().splitlines()[1:]
                if line.split(",")[0].isdigit()}
    file_ids = {int(p.stem) for p in (root / "images").iterdir() if p.stem.isdigit()}
    assert (line_ids | file_ids) <= (product_ids | rejected)
    sources = {r[0] for r in bad_result.rejects.select("source").collect()}
    assert "images/readme.jpg" in sources


def test_odd_but_valid_images_keep_format_mode_and_bytes(bad_result, bad_catalogue):
    root, _ = bad_catalogue
    rows = bad_result.products.filter(F.col("display_name").startswith("Odd")).collect()
    modes = {(r["format"], r["mode"]) for r in rows}
    assert {("PNG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA")} <= modes
    for r in rows:
        data = (root / r["image_file"]).read_bytes()
        assert bytes(r["image"]) == data
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert (r["width"], r["height"]) == (60, 80)


def test_names_with_commas_are_repaired(bad_result):
    names = {r[0] for r in bad_result.products.select("display_name").collect()}
    assert "Nike Men, Red, Tee" in names and "Puma, Red Tee" in names


def test_summary_counts(bad_result, bad_catalogue):
    _, made = bad_catalogue
    assert sum(bad_result.rejects_by_reason.values()) == bad_result.rejects.count()
    assert sum(bad_result.per_class.values()) == bad_result.ingested
    assert bad_result.per_class["Home"] == 1


def same_rows(a, b) -> bool:
    """The same multiset of rows (both ways: an empty side never passes by itself)."""
    return a.exceptAll(b).isEmpty() and b.exceptAll(a).isEmpty()


def test_step_writes_tables_and_rerun_is_idempotent(spark, bad_catalogue, tmp_path):
    root, made = bad_catalogue
    cfg = load_config(None, [f"data_dir={root}", f"warehouse={tmp_path}"])
    tables = Catalog(spark, cfg.warehouse)
    first = ingest_step(spark, cfg)
    assert first.outputs == {"products": 0, "rejects": 0}
    products = tables.read("products")
    assert sorted(r[0] for r in products.select("product_id").collect()) == made["product_ids"]
    assert first.metrics["products"] == len(made["product_ids"])
    assert first.metrics["rejects"] == tables.read("rejects").count() >= len(made["rejects"])
    again = ingest_step(spark, cfg)  # nothing changed in the folder: nothing to commit
    assert again.outputs == {} and "nothing committed" in again.summary
    assert again.metrics["decoded"] < first.metrics["decoded"] / 4  # only files of no product
    assert Catalog(spark, cfg.warehouse).version("products") == 0
    assert same_rows(tables.read("products"), products)


def test_catalogue_changes_name_every_kind_of_change(spark):
    from lookbook.io.ingest import catalogue_changes

    columns = "product_id long, gender string, year int, sha256 string, image binary"
    before = spark.createDataFrame([
        (1, "Men", 2011, "a", b"x"), (2, "Men", 2011, "b", b"y"), (3, None, 2012, "c", b"z"),
        (4, "Women", None, "d", b"w"), (5, "Men", 2011, "e", b"v")], columns)
    after = spark.createDataFrame([
        (1, "Men", 2011, "a", b"x"),  # unchanged
        (2, "Men", 2011, "B", b"Y"),  # new image
        (3, None, 2013, "c", b"z"),  # new year; a null that stays null is no change
        (4, "Women", None, "d", b"w"),
        (6, "Men", 2011, "f", b"u")], columns)  # new; 5 is deleted
    got = {r["product_id"]: r["change"] for r in catalogue_changes(after, before).collect()}
    assert got == {2: "image", 3: "labels", 5: "deleted", 6: "new"}


def test_sample_is_deterministic_whatever_the_partitioning(spark):
    ids = spark.range(1, 2001).withColumnRenamed("id", "product_id")
    picks = [sorted(r[0] for r in df.where(sample_filter(0.3)).collect())
             for df in (ids, ids.repartition(7), ids.orderBy(F.desc("product_id")).coalesce(1))]
    assert picks[0] == picks[1] == picks[2]
    assert 0.25 < len(picks[0]) / 2000 < 0.35
    assert ids.where(sample_filter(1.0)).count() == 2000


def test_a_sampled_ingest_keeps_products_and_rejects_of_the_sample(spark, bad_catalogue):
    root, made = bad_catalogue
    run = ingest_catalogue(spark, str(root), 50_000_000, 1_000_000, sample_fraction=0.5)
    try:
        in_sample = {r[0] for r in spark.createDataFrame([(i,) for i in range(100_000, 101_000)],
                                                         "product_id long")
                     .where(sample_filter(0.5)).collect()}
        products = {r[0] for r in run.products.select("product_id").collect()}
        assert products == set(made["product_ids"]) & in_sample and 0 < len(products) < 60
        rejected = {r[0] for r in run.rejects.select("product_id").collect()} - {None}
        assert rejected <= in_sample
    finally:
        run.release()


def test_missing_folder_is_a_clear_error(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="styles.csv"):
        ingest_catalogue(spark, str(tmp_path), 1, 1)


# --- the real catalogue --------------------------------------------------------------------

def test_real_styles_csv_parses_every_row_and_repairs_22_names(spark, real_data):
    styles = read_styles(spark, str(real_data / "styles.csv"))
    assert styles.count() == 44_441
    assert styles.filter(F.col("reason").isNotNull()).count() == 0
    repaired = styles.filter(F.col("product_id").isin(MALFORMED_REAL_IDS)).collect()
    assert len(repaired) == 22
    assert all("," in r["display_name"] and r["master_category"] for r in repaired)


@pytest.fixture(scope="module")
def real_slice(real_data, tmp_path_factory):
    """The 22 malformed rows plus every 150th row, with their images linked, not copied."""
    root = tmp_path_factory.mktemp("real_slice")
    (root / "images").mkdir()
    lines = (real_data / "styles.csv").read_text().splitlines()
    keep = [lines[0]] + [line for i, line in enumerate(lines[1:])
                         if i % 150 == 0 or int(line.split(",")[0]) in MALFORMED_REAL_IDS]
    (root / "styles.csv").write_text("\n".join(keep) + "\n")
    for line in keep[1:]:
        pid = line.split(",")[0]
        os.symlink(real_data / "images" / f"{pid}.jpg", root / "images" / f"{pid}.jpg")
    return root, len(keep) - 1


def test_real_slice_ingests_everything_with_zero_rejects(spark, real_slice):
    root, n = real_slice
    result = ingest_catalogue(spark, str(root), 50_000_000, 64 << 20)
    try:
        assert result.rejects.count() == 0
        assert result.ingested == n
        modes = {r[0] for r in result.products.select("mode").distinct().collect()}
        assert "RGB" in modes
        named = result.products.filter(F.col("product_id") == 59768).first()
        assert "," in named["display_name"]
    finally:
        result.release()
