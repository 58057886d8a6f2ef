"""Augmented copies: deterministic (the same bytes across runs, processes and partitionings),
of train products only, towards the configured targets, white where the warp exposes the
border, made again only for new and changed products, featurized like the products and
used by train (and by nothing else)."""
import hashlib
import io
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable
from PIL import Image

from lookbook.augment.copies import class_rates, copies_column, copies_of_parent, make_copies
from lookbook.augment.transforms import CopyParameters, augment_image, copy_parameters
from lookbook.config import AugmentSettings
from lookbook.io.catalog import Catalog
from lookbook.models.split import split_of
from lookbook.pipelines.augment_steps import augment, transform_ranges
from lookbook.pipelines.catalogue_steps import ingest

from helpers import config_for, copy_tables

AUGMENT = ("augment.enabled=true", "augment.target_per_class=20", "augment.max_factor=3")
RANGES = transform_ranges(AugmentSettings())  # the config's defaults
IDENTITY = CopyParameters(0.0, 0.0, 0.0, 0.0, 1.0, False, 1.0)


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def rows(warehouse: str, table: str) -> list[dict]:
    return DeltaTable(str(Path(warehouse) / table)).to_pyarrow_table().to_pylist()


# --- one copy --------------------------------------------------------------------------------

def test_parameters_come_from_seed_parent_and_index_and_stay_in_their_ranges():
    ranges = RANGES
    draws = [copy_parameters(0, pid, i, ranges) for pid in range(100, 300) for i in range(3)]
    assert copy_parameters(0, 150, 1, ranges) == copy_parameters(0, 150, 1, ranges)
    assert copy_parameters(1, 150, 1, ranges) != copy_parameters(0, 150, 1, ranges)
    assert copy_parameters(0, 150, 2, ranges) != copy_parameters(0, 150, 1, ranges)
    for p in draws:
        assert abs(p.rotation) <= ranges.rotation_degrees and abs(p.shear) <= ranges.shear_degrees
        assert abs(p.shift_x) <= ranges.width_shift and abs(p.shift_y) <= ranges.height_shift
        assert abs(p.zoom - 1) <= ranges.zoom and abs(p.brightness - 1) <= ranges.brightness
    # Spread over the ranges, not stuck: both signs, and about half flipped.
    assert min(p.rotation for p in draws) < -10 < 10 < max(p.rotation for p in draws)
    assert 0.4 < np.mean([p.flip for p in draws]) < 0.6
    no_flip = replace(ranges, horizontal_flip=False)
    assert not any(copy_parameters(0, pid, 0, no_flip).flip for pid in range(100))


def test_a_copy_is_the_same_png_every_time_at_the_parents_size():
    rng = np.random.default_rng(3)
    parent = png(Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)))
    p = copy_parameters(0, 7, 0, RANGES)
    first, second = augment_image(parent, p), augment_image(parent, p)
    assert first == second
    img = Image.open(io.BytesIO(first))
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (60, 80))
    assert augment_image(parent, copy_parameters(0, 7, 1, RANGES)) != first


def test_identity_parameters_give_the_parent_back():
    rng = np.random.default_rng(4)
    original = rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)
    assert (pixels(augment_image(png(Image.fromarray(original)), IDENTITY)) == original).all()


def test_borders_the_warp_exposes_are_white_not_black():
    black = png(Image.new("RGB", (60, 80), (0, 0, 0)))
    rotated = pixels(augment_image(black, replace(IDENTITY, rotation=30.0)))
    # A 30 degree turn of a 60x80 rectangle leaves every corner outside the photo.
    for y, x in ((0, 0), (0, 59), (79, 0), (79, 59)):
        assert (rotated[y, x] == 255).all()
    assert (rotated[40, 30] == 0).all()  # the photo itself stays
    shifted = pixels(augment_image(black, replace(IDENTITY, shift_x=0.2)))  # 12 px right
    assert (shifted[:, :11] == 255).all() and (shifted[:, 13:] == 0).all()
    smaller = pixels(augment_image(black, replace(IDENTITY, zoom=0.8)))
    assert (smaller[:7] == 255).all() and (smaller[40, 30] == 0).all()


def test_the_kinds_move_the_picture_the_way_they_say():
    square = Image.new("RGB", (60, 80), (255, 255, 255))
    square.paste((0, 0, 0), (20, 10, 40, 20))  # a dark bar at the top, in the middle

    def dark_box(p: CopyParameters) -> tuple[int, int, int, int]:
        ys, xs = np.where(pixels(augment_image(png(square), p)).sum(axis=2) < 384)
        return xs.min(), xs.max(), ys.min(), ys.max()

    assert dark_box(IDENTITY) == (20, 39, 10, 19)
    assert dark_box(replace(IDENTITY, shift_y=0.1)) == (20, 39, 18, 27)
    # Counter-clockwise a quarter turn: the top moves to the left edge.
    left, right, top, bottom = dark_box(replace(IDENTITY, rotation=90.0))
    assert right < 15 and 25 <= top and bottom <= 55
    left, right, top, bottom = dark_box(replace(IDENTITY, zoom=1.2))
    assert left < 20 and right > 39
    darker = pixels(augment_image(png(square), replace(IDENTITY, brightness=0.5)))
    assert abs(darker[60, 30].mean() - 127) <= 2


def test_greyscale_and_transparent_parents_give_rgb_copies():
    grey = png(Image.new("L", (60, 80), 90))
    rgba = png(Image.new("RGBA", (60, 80), (0, 0, 0, 0)))
    p = copy_parameters(0, 1, 0, RANGES)
    assert Image.open(io.BytesIO(augment_image(grey, p))).mode == "RGB"
    # Transparent is the white background, as for featurize.
    assert (pixels(augment_image(rgba, replace(IDENTITY, brightness=1.0))) == 255).all()


# --- how many --------------------------------------------------------------------------------

def test_class_rates_raise_small_classes_to_the_target_capped_by_the_factor():
    rates = class_rates({"Apparel": 17000, "Personal Care": 1923, "Free Items": 84,
                         "Home": 1}, target=2000, max_factor=5)
    assert rates["Apparel"] == 1.0
    assert rates["Personal Care"] == pytest.approx(2000 / 1923)
    assert rates["Free Items"] == 5.0 and rates["Home"] == 5.0


def test_copies_per_parent_in_spark_equal_the_pure_python_twin(spark):
    from pyspark.sql import functions as F

    ids = list(range(1000, 3000))
    for rate in (1.0, 1.25, 2.5, 3.0):
        got = (spark.createDataFrame([(i,) for i in ids], "product_id long")
               .select("product_id", copies_column(F.lit(rate), 5, "product_id").alias("n"))
               .toPandas().set_index("product_id")["n"])
        want = {i: copies_of_parent(rate, 5, i) for i in ids}
        assert got.to_dict() == want
        # Whole rates exactly, fractions on average.
        assert abs(got.mean() - (rate - 1)) < 0.04


def test_copies_do_not_depend_on_the_partitioning(spark, featurized):
    from pyspark.sql import functions as F

    tables = Catalog(spark, featurized.warehouse)
    parents = (tables.read("products").orderBy("product_id").limit(12)
               .withColumn("copies", F.lit(3)))
    ranges = RANGES
    one = make_copies(parents, 0, ranges, 1).select("image_key", "image").toPandas()
    many = make_copies(parents, 0, ranges, 7).select("image_key", "image").toPandas()
    assert len(one) == 36
    assert dict(zip(one.image_key, map(bytes, one.image))) == \
        dict(zip(many.image_key, map(bytes, many.image)))


# --- the augment step ------------------------------------------------------------------------

@pytest.fixture
def augmented(spark, warehouse_copy):
    cfg = config_for(Path(warehouse_copy.data_dir), Path(warehouse_copy.warehouse),
                     Path(warehouse_copy.featurize.weights_cache), *AUGMENT)
    return cfg, augment(spark, cfg)


def test_copies_are_of_train_products_only_and_reach_the_targets(augmented):
    cfg, result = augmented
    products = {r["product_id"]: r for r in rows(cfg.warehouse, "products")}
    copies = rows(cfg.warehouse, "augmented")
    assert copies and result.outputs == {"augmented": 0}
    train = {pid for pid in products if split_of(pid) == "train"}
    assert {c["parent_id"] for c in copies} <= train  # never a validation or test product
    per_class = {}
    for pid in train:
        per_class.setdefault(products[pid]["master_category"], []).append(pid)
    made = {}
    for c in copies:
        made.setdefault(products[c["parent_id"]]["master_category"], []).append(c)
    for name, members in per_class.items():
        n = len(members)
        goal = min(20, 3 * n)
        got = len(made.get(name, []))
        if goal <= n:
            assert got == 0, name
        elif goal == 3 * n:  # a whole rate: every parent exactly two copies
            assert got == 2 * n, name
        else:  # each parent one more copy or not: within reach of the goal
            assert 0 < got <= 2 * n and abs(n + got - goal) <= max(3, 0.5 * n), name
        assert result.metrics.get(f"copies.{name}", 0) == got, name
    assert result.metrics["copies"] == len(copies)


def test_a_copy_is_its_parents_image_transformed_by_its_own_parameters(augmented):
    """Recomputed here, in one plain Python process: the same bytes as Spark's workers made."""
    cfg, _ = augmented
    products = {r["product_id"]: r for r in rows(cfg.warehouse, "products")}
    ranges = RANGES  # the fixture runs with the defaults
    for c in rows(cfg.warehouse, "augmented"):
        parent = products[c["parent_id"]]
        p = copy_parameters(0, c["parent_id"], c["copy_index"], ranges)
        assert c["image"] == augment_image(parent["image"], p)
        assert c["image_key"] == f"{c['parent_id']}:aug{c['copy_index']}"
        assert c["sha256"] == hashlib.sha256(c["image"]).hexdigest()
        assert c["parent_sha256"] == parent["sha256"]
        assert (c["master_category"], c["article_type"]) == (parent["master_category"],
                                                             parent["article_type"])
        assert c["rotation"] == pytest.approx(p.rotation) and c["flip"] == p.flip
    assert (Path(cfg.reports_dir) / "augment" / "copies.png").stat().st_size > 0
    assert "Parents (left) beside their copies" in (
        Path(cfg.reports_dir) / "augment" / "index.html").read_text()


def test_two_runs_with_one_seed_make_the_same_bytes_and_a_rerun_commits_nothing(
        spark, augmented, tmp_path):
    cfg, _ = augmented
    again = augment(spark, cfg)
    assert again.outputs == {} and "nothing committed" in again.summary
    other = tmp_path / "other"
    copy_tables(Path(cfg.warehouse), other)
    shutil.rmtree(other / "augmented")
    cfg2 = config_for(Path(cfg.data_dir), other, Path(cfg.featurize.weights_cache), *AUGMENT)
    augment(spark, cfg2)
    first = {r["image_key"]: r["image"] for r in rows(cfg.warehouse, "augmented")}
    assert first == {r["image_key"]: r["image"] for r in rows(str(other), "augmented")}
    cfg3 = config_for(Path(cfg.data_dir), other, Path(cfg.featurize.weights_cache), *AUGMENT,
                      "augment.seed=1")
    augment(spark, cfg3)  # another seed: every copy made again, differently
    third = {r["image_key"]: r["image"] for r in rows(str(other), "augmented")}
    common = third.keys() & first.keys()  # a fractional rate's counts move with the seed
    assert len(common) > 0.8 * len(first)
    for key in common:
        # Equal only where nothing is left to move: a white product brightened into the
        # white background.
        assert third[key] != first[key] or (pixels(first[key]) == 255).all(), key


def test_off_makes_nothing(spark, warehouse_copy):
    result = augment(spark, warehouse_copy)
    assert "off" in result.summary and not (Path(warehouse_copy.warehouse) / "augmented").exists()


def test_a_refresh_copies_new_and_changed_products_only(spark, augmented, tmp_path):
    """New train products of small classes get copies; changed ones get new copies, deleted
    ones lose theirs; every other copy stays as it was."""
    cfg, _ = augmented
    before = {r["image_key"]: r for r in rows(cfg.warehouse, "augmented")}
    products = {r["product_id"]: r for r in rows(cfg.warehouse, "products")}
    data = tmp_path / "catalogue"
    shutil.copytree(cfg.data_dir, data)
    styles = data / "styles.csv"
    header, *lines = styles.read_text().splitlines()
    by_id = {int(line.split(",")[0]): line for line in lines if line.split(",")[0].isdigit()}

    def parents_of(name: str) -> list[int]:
        return sorted({r["parent_id"] for r in before.values() if r["master_category"] == name})

    # Classes whose rate is the factor (3 x at most 6 train products <= the target 20) before
    # and after: their parents have exactly two copies each.
    sporting, free = parents_of("Sporting Goods"), parents_of("Free Items")
    assert len(sporting) <= 4 and free
    changed, deleted = sporting[0], free[0]
    # New products: two train ones of Sporting Goods, and a test one.
    new_train = [pid for pid in range(700_000, 700_100) if split_of(pid) == "train"][:2]
    new_test = next(pid for pid in range(700_000, 700_100) if split_of(pid) == "test")
    for pid in [*new_train, new_test]:
        lines.append(",".join([str(pid), *by_id[sporting[-1]].split(",")[1:]]))
        shutil.copy(data / "images" / f"{sporting[-1]}.jpg", data / "images" / f"{pid}.jpg")
    img = Image.open(data / "images" / f"{changed}.jpg").convert("RGB").rotate(180)
    img.save(data / "images" / f"{changed}.jpg", format="JPEG")
    lines = [line for line in lines if not line.startswith(f"{deleted},")]
    styles.write_text("\n".join([header, *lines]) + "\n")

    cfg = config_for(data, Path(cfg.warehouse), Path(cfg.featurize.weights_cache), *AUGMENT)
    ingest(spark, cfg)
    result = augment(spark, cfg)
    after = {r["image_key"]: r for r in rows(cfg.warehouse, "augmented")}
    assert "new and changed since products version 0" in result.summary
    by_parent = {}
    for r in after.values():
        by_parent.setdefault(r["parent_id"], []).append(r)
    assert deleted not in by_parent and new_test not in by_parent
    for pid in [*new_train, changed]:
        assert len(by_parent[pid]) == 2
    assert all(r["parent_sha256"] != products[changed]["sha256"] for r in by_parent[changed])
    untouched = {k: r for k, r in before.items() if r["parent_id"] not in (changed, deleted)}
    assert all(after[k] == r for k, r in untouched.items())
    assert set(after) == set(untouched) | {k for p in [*new_train, changed]
                                           for k in (f"{p}:aug0", f"{p}:aug1")}
    assert result.metrics["made"] == 6


def test_featurize_computes_the_copies_and_train_uses_them_for_training_only(spark, augmented):
    from pyspark import SparkFiles

    from lookbook.features.featurize import cached_model, embed_batch
    from lookbook.models.classifier import label_list
    from lookbook.pipelines.classifier_steps import read_training_data
    from lookbook.pipelines.feature_steps import feature_spec, featurize

    cfg, _ = augmented
    result = featurize(spark, cfg)
    copies = {r["image_key"]: r for r in rows(cfg.warehouse, "augmented")}
    assert f"copies: {len(copies)} computed, 0 already done, 0 failed" in result.summary
    vectors = {r["image_key"]: r for r in rows(cfg.warehouse, "augmented_features")}
    assert vectors.keys() == copies.keys()
    spec = feature_spec(spark, cfg)
    model = cached_model(spec, SparkFiles.get(spec.weights_file))
    some = sorted(copies)[:8]
    want = embed_batch(model, [copies[k]["image"] for k in some], spec)["embedding"]
    for key, vector in zip(some, want):
        assert vectors[key]["sha256"] == copies[key]["sha256"]
        np.testing.assert_allclose(vectors[key]["embedding"], vector, rtol=1e-5, atol=1e-6)
    # The products' features hold products only.
    products = {r["product_id"] for r in rows(cfg.warehouse, "products")}
    assert {r["product_id"] for r in rows(cfg.warehouse, "features")} == products
    assert "copies: 0 computed" in featurize(spark, cfg).summary

    tables = Catalog(spark, cfg.warehouse)
    labels = label_list(tables.read("products"), "master_category")
    data = read_training_data(tables, cfg, spec, labels).toPandas()
    made = data[data["copy"]]
    assert len(made) == len(copies) and set(made["split"]) == {"train"}
    assert sorted(made["product_id"]) == sorted(c["parent_id"] for c in copies.values())
    assert len(data) - len(made) == len(products)
    off = config_for(Path(cfg.data_dir), Path(cfg.warehouse), Path(cfg.featurize.weights_cache))
    assert not read_training_data(Catalog(spark, off.warehouse), off, spec, labels) \
        .where("copy").count()
