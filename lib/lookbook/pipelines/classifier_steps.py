"""Steps of the classifier: train the head (optionally fine-tune), evaluate it on the test
part, predict every product."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import tracking
from ..config import Config
from ..features.featurize import FeatureModelSpec, driver_feature_model
from ..io.catalog import (
    AUGMENTED,
    AUGMENTED_FEATURES,
    FEATURES,
    PREDICTION_REJECTS,
    PREDICTIONS,
    PRODUCTS,
    Catalog,
    Table,
)
from ..io.ingest import catalogue_changes
from ..models import classifier as clf
from ..models.classifier import FROM_FEATURES, FROM_IMAGE
from ..models.feed import Feed
from ..models.metrics import classification_metrics, metrics_table
from ..models.split import PARTS
from ..models.store import (
    FEATURES_INFO,
    MODEL_FILE,
    TrainedClassifier,
    find_model,
    new_run_id,
    save_classifier,
)
from ..models.training_data import training_data
from ..reports.classifier import plot_confusion, plot_misclassified, plot_training_curves
from ..reports.html import write_html
from .base import (
    ModelToLog,
    StepResult,
    catalog,
    committed,
    step,
    written_metrics,
    written_summary,
)
from .feature_steps import feature_spec, spec_params

log = logging.getLogger(__name__)
# What evaluate and predict use besides the model: how they classify products.
CLASSIFY_SETTINGS = ("model", "tensorflow.intra_op_threads", "featurize.rows_per_partition")


def read_training_data(tables: Catalog, cfg: Config, spec: FeatureModelSpec,
                       labels: list[str]) -> DataFrame:
    """`models.training_data` of the tables: with augment.enabled the augmented copies too,
    once both of their tables exist."""
    s = cfg.split
    with_copies = (cfg.augment.enabled and tables.exists(AUGMENTED)
                   and tables.exists(AUGMENTED_FEATURES))
    return training_data(
        tables.read(PRODUCTS), tables.read(FEATURES), spec, cfg.train.label, labels,
        train=s.train, validation=s.validation, salt=s.salt,
        copies=tables.read(AUGMENTED) if with_copies else None,
        copy_features=tables.read(AUGMENTED_FEATURES) if with_copies else None)


@step(reads=(PRODUCTS, FEATURES, AUGMENTED, AUGMENTED_FEATURES), writes=(),
      settings=("train", "split", "featurize", "tensorflow", "augment.enabled", "model.dir"))
def train(spark: SparkSession, cfg: Config) -> StepResult:
    """Train the classifier on the features (train.mode=finetune: then the backbone's last
    block too, on images); the model is saved under model.dir."""
    t = cfg.train
    tables = catalog(spark, cfg)
    spec = feature_spec(spark, cfg)
    labels = clf.label_list(tables.read(PRODUCTS), t.label)
    data = read_training_data(tables, cfg, spec, labels).persist()
    counts = {(r["split"], r["label"]): r["count"]
              for r in data.groupBy("split", "label").count().collect()}
    n_copies = data.where("copy").count()
    train_counts = {i: counts.get(("train", i), 0) for i in range(len(labels))}
    check_parts(counts, train_counts, spec)
    per_part = {part: sum(v for (p, _), v in counts.items() if p == part) for part in PARTS}
    log.info("train: %d classes, %s (train includes %d augmented copies)", len(labels),
             ", ".join(f"{part} {n:,}" for part, n in per_part.items()), n_copies)
    weights = clf.class_weights({i: n for i, n in train_counts.items() if n}, t.class_weights)
    weights = {i: weights.get(i, 1.0) for i in range(len(labels))}
    head, history, started = fit_head(cfg, data, labels, weights)
    data.unpersist()
    feature_model = driver_feature_model(spec)
    model = clf.assemble_classifier(feature_model, head, spec.height, spec.width)
    finetune_history = {}
    if t.mode == "finetune":
        finetune_history = finetune(tables, cfg, model, feature_model, labels, weights, spec)
    seconds = time.time() - started
    return save_trained(cfg, spec, model, labels, weights, history, finetune_history,
                        per_part, n_copies, seconds)


def check_parts(counts: dict, train_counts: dict[int, int], spec: FeatureModelSpec) -> None:
    """Training needs train examples and a validation part; say how to get them."""
    if not sum(train_counts.values()):
        raise RuntimeError(f"no features with this job's settings {spec.settings()}: run "
                           f"featurize with the same featurize.* config first")
    if not any(part == "validation" for part, _ in counts):
        raise RuntimeError("the validation part is empty: the catalogue is too small for "
                           "split.validation; raise it or add products")


def fit_head(cfg: Config, data: DataFrame, labels: list[str], weights: dict[int, float]
             ) -> tuple[object, dict, float]:
    """The head fitted on the train part, early-stopped on the validation part: (head,
    history, when the fit started)."""
    import keras

    t = cfg.train
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
    return head, history, started


def save_trained(cfg: Config, spec: FeatureModelSpec, model, labels: list[str],
                 weights: dict[int, float], history: dict, finetune_history: dict,
                 per_part: dict[str, int], n_copies: int, seconds: float) -> StepResult:
    """The model saved in its folder (named by the tracking run), with its training curves."""
    run_id = tracking.active_run_id() or new_run_id()
    info = {"mode": cfg.train.mode, "label_column": cfg.train.label, "labels": labels,
            "input_size": [spec.height, spec.width], FEATURES_INFO: spec.settings(),
            "split": asdict(cfg.split), "train_copies": n_copies}
    folder = save_classifier(model, info, cfg.models_dir, run_id)
    curves = plot_training_curves(finetune_history or history, folder / "training_curves.png")
    best = int(np.argmin(history["val_loss"]))
    # Not named like the per-epoch history: a metric's history would mix the two.
    validation = {"best_val_loss": history["val_loss"][best],
                  "best_val_accuracy": history["val_accuracy"][best]}
    return StepResult(
        f"model {run_id}, validation accuracy {validation['best_val_accuracy']:.4f}",
        details=(f"model {run_id} in {folder}: best epoch {best + 1}, validation loss "
                 f"{validation['best_val_loss']:.4f}, accuracy "
                 f"{validation['best_val_accuracy']:.4f}"
                 f"; trained on {per_part['train']:,} examples, {n_copies:,} of them augmented "
                 f"copies"),
        params={**spec_params(spec), "model": run_id, "model_folder": str(folder), "labels": labels,
                **{f"class_weight.{labels[i]}": round(w, 4) for i, w in weights.items()}},
        metrics={"best_epoch": best + 1, **validation, "train_seconds": seconds,
                 **{f"examples.{part}": n for part, n in per_part.items()},
                 "examples.train_copies": n_copies},
        history={**history, **{f"finetune.{k}": v for k, v in finetune_history.items()}},
        artefacts=[curves, folder / "model.json"],
        model=ModelToLog(folder / MODEL_FILE, labels))


def finetune(tables: Catalog, cfg: Config, model, feature_model, labels: list[str],
             weights: dict[int, float], spec: FeatureModelSpec) -> dict:
    """Train the backbone's last block with the head, on images, at a low learning rate."""
    t = cfg.train
    products = clf.with_label_index(
        clf.with_split(tables.read(PRODUCTS), cfg.split.train, cfg.split.validation,
                       cfg.split.salt), t.label, labels)
    products = products.where(F.col("split") != "test")
    if t.finetune_max_products:
        products = products.orderBy(F.xxhash64("product_id"), "product_id").limit(
            t.finetune_max_products)
    pixels = clf.with_pixels(products, spec.height, spec.width).persist()
    unfrozen = clf.unfreeze_from(feature_model, t.finetune_from_layer)
    log.info("finetune: training %s and the head on %d images at learning rate %s",
             ", ".join(unfrozen), pixels.count(), t.finetune_learning_rate)
    feeds = [Feed(pixels.where(F.col("split") == part).select("pixels", "label"),
                  cfg.petastorm_cache_url, t.seed) for part in ("train", "validation")]
    history = clf.fit(model, *feeds, clf.pixel_batch_transform(spec.height, spec.width),
                      min(t.batch_size, 64), t.finetune_epochs, t.finetune_learning_rate,
                      t.patience, t.seed, weights)
    for feed in feeds:
        feed.delete()
    pixels.unpersist()
    return history


def with_model_split(df: DataFrame, trained: TrainedClassifier) -> DataFrame:
    """Products with the split their model was trained with (the model's, not today's config)."""
    s = trained.info["split"]
    return clf.with_split(df, s["train"], s["validation"], s["salt"])


@step(reads=(PRODUCTS, FEATURES), writes=(), settings=CLASSIFY_SETTINGS)
def evaluate(spark: SparkSession, cfg: Config) -> StepResult:
    """The model (model.run_id) on the test part: metrics, confusion matrix, the misclassified."""
    tables = catalog(spark, cfg)
    trained = find_model(cfg.models_dir, cfg.model.run_id)
    label = trained.label_column
    products = with_model_split(tables.read(PRODUCTS), trained)
    test = products.where(F.col("split") == "test").where(F.col(label).isNotNull())
    result = classify(tables, cfg, trained, test.select("product_id", "sha256", label,
                                                        "image")).toPandas()
    failed = result[result["error"].notna()]
    result = result[result["error"].isna()]
    inputs = result["input"].value_counts().to_dict()
    metrics = classification_metrics(list(result[label]), np.stack(result["probabilities"]),
                                      trained.labels)
    metrics["failed_to_decode"] = len(failed)
    metrics["from_features"] = int(inputs.get(FROM_FEATURES, 0))
    metrics["from_images"] = int(inputs.get(FROM_IMAGE, 0))
    page, table, per_class, plots = evaluation_report(trained, metrics, result, products)
    scalar = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    per_class_metrics = {f"{name}.{row['class']}": row[name] for row in metrics["per_class"]
                         for name in ("precision", "recall", "f1")}
    return StepResult(
        f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}",
        details=(f"model {trained.run_id} on the test part\n{table.to_string(index=False)}\n"
                 f"{per_class.to_string(index=False)}\nreport: {page}, plots: {plots}"),
        params={"model": trained.run_id},
        metrics={**{f"test_{k}": v for k, v in scalar.items()}, **per_class_metrics},
        artefacts=[page.parent])


def evaluation_report(trained: TrainedClassifier, metrics: dict, result: pd.DataFrame,
                      products: DataFrame) -> tuple[Path, pd.DataFrame, pd.DataFrame, str]:
    """<model folder>/evaluation: metrics.json, the confusion matrix, the most confident
    mistakes and index.html: (the page, the metrics table, per class, the plots)."""
    label = trained.label_column
    out = trained.folder / "evaluation"
    confusion = plot_confusion(metrics["confusion"], trained.labels, out / "confusion.png")
    wrong = result[result[label] != result["predicted"]].sort_values(
        ["probability", "product_id"], ascending=[False, True]).head(48)
    images = (products.where(F.col("product_id").isin([int(i) for i in wrong["product_id"]]))
              .select("product_id", "image").toPandas())
    grid = plot_misclassified(wrong.rename(columns={label: "true"}).merge(images, on="product_id"),
                              out / "misclassified.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    table = metrics_table(metrics)
    per_class = pd.DataFrame(metrics["per_class"]).round(4)
    curves = trained.folder / "training_curves.png"
    page = write_html(out / "index.html", f"lookbook: classifier {trained.run_id}", [
        ("Test metrics", table), ("Per class (test part)", per_class),
        ("Confusion matrix", Path("confusion.png")),
        ("Training curves", Path("../training_curves.png") if curves.exists() else "none"),
        (f"Misclassified ({len(wrong)} most confident of "
         f"{int((result[label] != result['predicted']).sum())})", Path("misclassified.png")),
        ("Model", json.dumps(trained.info, indent=1)),
    ])
    return page, table, per_class, f"{confusion}, {grid}"


@step(reads=(PRODUCTS, FEATURES), writes=(PREDICTIONS, PREDICTION_REJECTS),
      settings=CLASSIFY_SETTINGS)
def predict(spark: SparkSession, cfg: Config) -> StepResult:
    """Every product's prediction. When the table holds this model's predictions of an
    earlier products version, only new and changed images are classified."""
    tables = catalog(spark, cfg)
    trained = find_model(cfg.models_dir, cfg.model.run_id)
    products = with_model_split(tables.read(PRODUCTS), trained)
    inputs = predict.inputs(tables, {"lookbook.model": trained.run_id})
    since = inputs.since(PRODUCTS)
    todo, changes = products_to_predict(tables, products, since)
    classified = classify(tables, cfg, trained,
                          todo.select("product_id", "sha256", "split", "image")).persist()
    outputs = write_predictions(tables, classified, trained, todo, changes, inputs.current())
    if changes is not None:
        changes.unpersist()
    good = classified.where(F.col("error").isNull())
    counts = {r["input"]: r["count"] for r in good.groupBy("input").count().collect()}
    n_good = sum(counts.values())
    n_failed = classified.count() - n_good
    classified.unpersist()
    how = "every product" if since is None else f"new and changed since products version {since}"
    return StepResult(f"{n_good:,} predicted with {trained.run_id} ({how}; "
                      f"{counts.get(FROM_FEATURES, 0):,} from stored features, "
                      f"{counts.get(FROM_IMAGE, 0):,} from images), {n_failed:,} failed"
                      + ("" if outputs else "; nothing committed"),
                      details=written_summary(tables.written),
                      params={"model": trained.run_id},
                      metrics={"predicted": n_good, "failed": n_failed,
                               "from_features": counts.get(FROM_FEATURES, 0),
                               "from_images": counts.get(FROM_IMAGE, 0),
                               "incremental": int(since is not None),
                               **written_metrics(tables.written)},
                      outputs=outputs)


def products_to_predict(tables: Catalog, products: DataFrame, since: int | None
                        ) -> tuple[DataFrame, DataFrame | None]:
    """(the products to classify, the changes since products version `since`, persisted:
    unpersist them once written); every product and None without a version."""
    if since is None:
        return products, None
    changes = catalogue_changes(tables.read(PRODUCTS),
                                tables.read(PRODUCTS, version=since)).persist()
    todo = products.join(changes.where("change in ('new', 'image')"), "product_id", "left_semi")
    return todo, changes


def write_predictions(tables: Catalog, classified: DataFrame, trained: TrainedClassifier,
                      todo: DataFrame, changes: DataFrame | None, meta: dict[str, str]
                      ) -> dict[Table, int]:
    """The predictions and the failures as one batch: every product's (overwritten), or
    with `changes` those of the products classified and deleted; the versions committed."""
    predictions = classified.where(F.col("error").isNull()).select(
        "product_id", "predicted", "probability", "probabilities", "split",
        F.lit(trained.run_id).alias("run_id"))
    failures = classified.where(F.col("error").isNotNull()).select(
        "product_id", F.lit("predict").alias("source"), F.col("error").alias("reason"),
        F.lit(trained.run_id).alias("detail"))
    if changes is None:
        return tables.write_together({PREDICTIONS: predictions, PREDICTION_REJECTS: failures},
                                     metadata=meta)
    deleted = changes.where("change = 'deleted'").select("product_id")
    gone = todo.select("product_id").unionByName(deleted)
    return committed(tables.merge_together({
        PREDICTIONS: (predictions, gone, None),
        PREDICTION_REJECTS: (failures, gone, ("product_id",))}, metadata=meta))


def classify(tables: Catalog, cfg: Config, trained: TrainedClassifier,
             products: DataFrame) -> DataFrame:
    """`products` classified: from stored features where the features table has the model's,
    the whole model on images elsewhere (`classifier.classify_products`)."""
    return clf.classify_products(
        products, tables.read(FEATURES) if tables.exists(FEATURES) else None, trained,
        cfg.model.batch_size, cfg.tensorflow.intra_op_threads, cfg.featurize.rows_per_partition)
