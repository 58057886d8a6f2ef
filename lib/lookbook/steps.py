"""Pipeline steps: config in, library calls, tables and files out. Each returns a one-line
summary for the pipeline's progress output. Jobs and the `pipeline` job run these."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import classifier as clf
from . import report as rpt
from . import similarity
from .config import Config
from .featurize import (FeatureModelSpec, featurize_products, plan_featurize, prepare_model,
                        settings_match)
from .evaluation import (classification_metrics, metrics_table, plot_confusion,
                         plot_misclassified, plot_training_curves)
from .feed import Feed
from .ingest import format_summary, ingest_catalogue
from .split import PARTS
from .tables import read_table, table_exists, write_table


def ingest(spark: SparkSession, cfg: Config) -> str:
    result = ingest_catalogue(
        spark, cfg.data_dir,
        max_image_pixels=cfg.ingest.max_image_pixels,
        max_file_bytes=cfg.ingest.max_file_bytes,
        sample_fraction=cfg.ingest.sample_fraction,
        target_file_bytes=cfg.spark.target_file_bytes)
    meta = {"lookbook.job": "ingest", "lookbook.data_dir": str(Path(cfg.data_dir).resolve())}
    products_version = write_table(result.products, cfg.table_path("products"), metadata=meta)
    rejects_version = write_table(result.rejects, cfg.table_path("rejects"), metadata=meta)
    result.release()
    print(format_summary(result))
    print(f"wrote {cfg.table_path('products')} (version {products_version}) and "
          f"{cfg.table_path('rejects')} (version {rejects_version})")
    n_rejects = sum(result.rejects_by_reason.values())
    return f"{result.ingested:,} products, {n_rejects:,} rejects"


def feature_spec(spark: SparkSession, cfg: Config) -> FeatureModelSpec:
    """The configured feature model, its weights resolved and shipped to the executors."""
    f = cfg.featurize
    return prepare_model(spark, f.backbone, f.weights, str(Path(f.weights_cache).expanduser()),
                         f.height, f.width, f.precision, f.batch_size,
                         cfg.tensorflow.intra_op_threads, f.layers)


def featurize(spark: SparkSession, cfg: Config) -> str:
    spec = feature_spec(spark, cfg)
    print(f"featurize: {spec.backbone} ({spec.layers}) {spec.height}x{spec.width} "
          f"{spec.precision}, weights: "
          f"{spec.weights}, preprocessing: {spec.preprocessing}")
    features_path = cfg.table_path("features")
    products = read_table(spark, cfg.table_path("products"))
    existing = read_table(spark, features_path) if table_exists(features_path) else None
    todo, keep = plan_featurize(products, existing, spec)
    new = featurize_products(todo, spec, cfg.featurize.rows_per_partition).persist()
    n_new = new.count()
    n_failed = new.filter(F.col("error").isNotNull()).count()
    kept = keep.filter(settings_match(spec)).count() if keep is not None else 0
    print(f"featurize: {n_new - n_failed:,} computed, {kept:,} already done, {n_failed:,} failed")
    if n_new:
        meta = {"lookbook.job": "featurize", **{f"lookbook.{k}": str(v)
                                               for k, v in spec.settings().items()}}
        computed = new.filter(F.col("error").isNull()).drop("error")
        features = computed if keep is None else keep.unionByName(computed)
        write_table(features, features_path, metadata=meta)
        failures = new.filter(F.col("error").isNotNull()).select(
            "product_id", F.lit("featurize").alias("source"), F.col("error").alias("reason"),
            F.concat_ws(" ", *[F.col(c).cast("string") for c in spec.settings()]).alias("detail"))
        write_table(failures, cfg.table_path("feature_rejects"), metadata=meta)
    new.unpersist()
    return f"{n_new - n_failed:,} computed, {kept:,} already done, {n_failed:,} failed"


def report(spark: SparkSession, cfg: Config) -> str:
    products = read_table(spark, cfg.table_path("products"))
    rejects = read_table(spark, cfg.table_path("rejects"))
    out = Path(cfg.reports_dir) / "catalogue"
    counts = rpt.class_counts(products)
    balance = rpt.plot_class_balance(counts, out / "class_balance.png", "masterCategory")
    samples = rpt.plot_samples(rpt.sample_per_class(products, cfg.report.samples_per_class),
                               out / "samples.png")
    reasons = rejects.groupBy("reason").count().orderBy(F.desc("count")).toPandas()
    page = rpt.write_html(out / "index.html", "lookbook: catalogue", [
        ("Products per masterCategory", counts),
        ("Class balance", balance),
        ("Sample images per class", samples),
        ("Rejected inputs by reason", reasons if len(reasons) else "no rejects"),
    ])
    print(f"report: {page}\n{counts.to_string(index=False)}")
    return f"{page}"


def train(spark: SparkSession, cfg: Config) -> str:
    t = cfg.train
    spec = feature_spec(spark, cfg)
    products = read_table(spark, cfg.table_path("products"))
    labels = clf.label_list(products, t.label)
    labelled = clf.with_label_index(
        clf.with_split(products.select("product_id", t.label),
                       cfg.split.train, cfg.split.validation, cfg.split.salt), t.label, labels)
    if not table_exists(cfg.table_path("features")):
        raise RuntimeError("no features table: run the featurize job first")
    features = (read_table(spark, cfg.table_path("features")).filter(settings_match(spec))
                .select("product_id", "embedding"))
    data = labelled.join(features, "product_id").persist()
    counts = {(r["split"], r["label"]): r["count"]
              for r in data.groupBy("split", "label").count().collect()}
    train_counts = {i: counts.get(("train", i), 0) for i in range(len(labels))}
    missing = labelled.join(features, "product_id", "left_anti").count()
    if not sum(train_counts.values()):
        raise RuntimeError(f"no features with this job's settings {spec.settings()}: run "
                           f"featurize with the same featurize.* config first")
    if not any(part == "validation" for part, _ in counts):
        raise RuntimeError("the validation part is empty: the catalogue is too small for "
                           "split.validation; raise it or add products")
    print(f"train: {len(labels)} classes, " + ", ".join(
        f"{part} {sum(v for (p, _), v in counts.items() if p == part):,}"
        for part in PARTS) + (f"; {missing:,} products without features left out" if missing
                              else ""))
    weights = clf.class_weights({i: n for i, n in train_counts.items() if n}, t.class_weights)
    weights = {i: weights.get(i, 1.0) for i in range(len(labels))}

    import keras

    keras.utils.set_random_seed(t.seed)
    feeds = [Feed(data.where(F.col("split") == part).select("embedding", "label"),
                  cfg.petastorm_cache_url, t.seed) for part in ("train", "validation")]
    dim = len(data.select("embedding").first()[0])
    head = clf.build_head(dim, len(labels), t.dense_units, t.dropout, t.seed)
    started = time.time()
    history = clf.fit(head, *feeds, clf.feature_batch_transform, t.batch_size,
                      t.epochs, t.learning_rate, t.patience, t.seed, weights)
    for feed in feeds:
        feed.delete()
    data.unpersist()
    feature_model = build_feature_model_of(spec)
    model = clf.assemble_classifier(feature_model, head, spec.height, spec.width)
    finetune_history = None
    if t.mode == "finetune":
        finetune_history = finetune(spark, cfg, model, feature_model, labels, weights, spec)
    run_id = clf.new_run_id()
    run = {
        "run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": t.mode,
        "label_column": t.label, "labels": labels, "input_size": [spec.height, spec.width],
        "features": spec.settings(), "split": asdict(cfg.split), "train": asdict(t),
        "class_weights": {labels[i]: w for i, w in weights.items()},
        "examples": {f"{part}/{labels[i]}": n for (part, i), n in sorted(counts.items())},
        "history": history, "finetune_history": finetune_history,
        "best_epoch": int(np.argmin(history["val_loss"])) + 1,
        "validation": {k: min(history["val_loss"]) if k == "loss" else
                       history["val_accuracy"][int(np.argmin(history["val_loss"]))]
                       for k in ("loss", "accuracy")},
        "train_seconds": round(time.time() - started, 1),
    }
    folder = clf.save_classifier(model, labels, run, cfg.models_dir, run_id)
    plot_training_curves(finetune_history or history, folder / "training_curves.png")
    print(f"train: model {run_id} in {folder}: best epoch {run['best_epoch']}, validation "
          f"loss {run['validation']['loss']:.4f}, accuracy {run['validation']['accuracy']:.4f}")
    return f"model {run_id}, validation accuracy {run['validation']['accuracy']:.4f}"


def build_feature_model_of(spec: FeatureModelSpec):
    """The driver's copy of the feature model the features table was made with."""
    from pyspark import SparkFiles

    from .featurize import build_model

    return build_model(spec, SparkFiles.get(spec.weights_file))


def finetune(spark: SparkSession, cfg: Config, model, feature_model, labels: list[str],
             weights: dict[int, float], spec: FeatureModelSpec) -> dict:
    """Train the backbone's last block with the head, on images, at a low learning rate."""
    t = cfg.train
    products = clf.with_label_index(
        clf.with_split(read_table(spark, cfg.table_path("products")),
                       cfg.split.train, cfg.split.validation, cfg.split.salt), t.label, labels)
    products = products.where(F.col("split") != "test")
    if t.finetune_max_products:
        products = products.orderBy(F.xxhash64("product_id"), "product_id").limit(
            t.finetune_max_products)
    pixels = clf.with_pixels(products, spec.height, spec.width).persist()
    unfrozen = clf.unfreeze_from(feature_model, t.finetune_from_layer)
    print(f"finetune: training {', '.join(unfrozen)} and the head on "
          f"{pixels.count():,} images at learning rate {t.finetune_learning_rate}")
    feeds = [Feed(pixels.where(F.col("split") == part).select("pixels", "label"),
                  cfg.petastorm_cache_url, t.seed) for part in ("train", "validation")]
    history = clf.fit(model, *feeds, clf.pixel_batch_transform(spec.height, spec.width),
                      min(t.batch_size, 64), t.finetune_epochs, t.finetune_learning_rate,
                      t.patience, t.seed, weights)
    for feed in feeds:
        feed.delete()
    pixels.unpersist()
    return history


def run_split(df: DataFrame, trained: clf.TrainedClassifier) -> DataFrame:
    """Products with the split their model was trained with (the run's, not today's config)."""
    s = trained.run["split"]
    return clf.with_split(df, s["train"], s["validation"], s["salt"])


def evaluate(spark: SparkSession, cfg: Config) -> str:
    trained = clf.find_run(cfg.models_dir, cfg.model.run_id)
    label = trained.run["label_column"]
    products = run_split(read_table(spark, cfg.table_path("products")), trained)
    test = products.where(F.col("split") == "test").where(F.col(label).isNotNull())
    classified = clf.classify_images(test.select("product_id", label, "image"), trained,
                                     cfg.model.batch_size, cfg.tensorflow.intra_op_threads)
    result = classified.toPandas()
    failed = result[result["error"].notna()]
    result = result[result["error"].isna()]
    metrics = classification_metrics(list(result[label]), np.stack(result["probabilities"]),
                                      trained.labels)
    metrics["failed_to_decode"] = len(failed)
    out = trained.folder / "evaluation"
    confusion = plot_confusion(metrics["confusion"], trained.labels, out / "confusion.png")
    wrong = result[result[label] != result["predicted"]].sort_values(
        ["probability", "product_id"], ascending=[False, True]).head(48)
    images = (products.where(F.col("product_id").isin([int(i) for i in wrong["product_id"]]))
              .select("product_id", "image").toPandas())
    grid = plot_misclassified(wrong.rename(columns={label: "true"}).merge(images, on="product_id"),
                              out / "misclassified.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    trained.run["test"] = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}
    clf.write_run(trained.folder, trained.run)
    table = metrics_table(metrics)
    per_class = pd.DataFrame(metrics["per_class"]).round(4)
    curves = trained.folder / "training_curves.png"
    page = rpt.write_html(out / "index.html", f"lookbook: classifier {trained.run_id}", [
        ("Test metrics", table), ("Per class (test part)", per_class),
        ("Confusion matrix", Path("confusion.png")),
        ("Training curves", Path("../training_curves.png") if curves.exists() else "none"),
        (f"Misclassified ({len(wrong)} most confident of "
         f"{int((result[label] != result['predicted']).sum())})", Path("misclassified.png")),
        ("Run", json.dumps({k: trained.run[k] for k in ("run_id", "mode", "features", "train",
                                                        "split", "validation")}, indent=1)),
    ])
    print(f"evaluate: model {trained.run_id} on the test part\n{table.to_string(index=False)}\n"
          f"{per_class.to_string(index=False)}\nreport: {page}, plots: {confusion}, {grid}")
    return f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}"


def predict(spark: SparkSession, cfg: Config) -> str:
    trained = clf.find_run(cfg.models_dir, cfg.model.run_id)
    products = run_split(read_table(spark, cfg.table_path("products")), trained)
    n = products.count()
    partitions = max(spark.sparkContext.defaultParallelism,
                     -(-n // cfg.featurize.rows_per_partition))
    classified = clf.classify_images(
        products.select("product_id", "split", "image").repartition(partitions), trained,
        cfg.model.batch_size, cfg.tensorflow.intra_op_threads).persist()
    meta = {"lookbook.job": "predict", "lookbook.run_id": trained.run_id}
    good = classified.where(F.col("error").isNull())
    predictions = good.select("product_id", "predicted", "probability", "probabilities",
                              "split", F.lit(trained.run_id).alias("run_id"))
    version = write_table(predictions, cfg.table_path("predictions"), metadata=meta)
    failures = classified.where(F.col("error").isNotNull()).select(
        "product_id", F.lit("predict").alias("source"), F.col("error").alias("reason"),
        F.lit(trained.run_id).alias("detail"))
    write_table(failures, cfg.table_path("prediction_rejects"), metadata=meta)
    n_good, n_failed = good.count(), classified.count() - good.count()
    classified.unpersist()
    print(f"predict: model {trained.run_id}: {n_good:,} products predicted, {n_failed:,} failed; "
          f"wrote {cfg.table_path('predictions')} (version {version})")
    return f"{n_good:,} predicted with {trained.run_id}, {n_failed:,} failed"


STEPS: dict[str, Callable[[SparkSession, Config], str]] = {
    "ingest": ingest,
    "featurize": featurize,
    "report": report,
    "train": train,
    "evaluate": evaluate,
    "predict": predict,
    "neighbours": similarity.neighbours,
    "evaluate_neighbours": similarity.evaluate_neighbours,
    "duplicates": similarity.duplicates,
    "similar": similarity.similar,
}
# What `pipeline` runs, in order.
PIPELINE = ["ingest", "featurize", "report", "train", "evaluate", "predict", "neighbours",
            "evaluate_neighbours", "duplicates"]


def summary_table(rows: list[tuple[str, float, str]]) -> str:
    table = pd.DataFrame(rows, columns=["step", "seconds", "result"])
    table["seconds"] = table["seconds"].map(lambda s: f"{s:.1f}")
    return table.to_string(index=False)
