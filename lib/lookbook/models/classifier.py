"""The masterCategory classifier: a dense head on the frozen backbone's features, trained
through the Petastorm feed; optionally fine-tuned with the backbone's last block on images.

The trained model is one Keras model, raw RGB image (any size, 0..255) -> class
probabilities: Resizing (bilinear, antialiased) -> the feature model (preprocessing inside)
-> head. `lookbook.models.store` saves and finds it. Products whose features are stored with
the model's feature settings are classified by the head alone (`classify_products`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from functools import reduce

import numpy as np
import pandas as pd
from pyspark import SparkFiles
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..features.featurize import (
    limit_tf_threads,
    run_on_images,
    settings_equal,
    spread_images,
    usable_embedding,
)
from ..io.files import ship_file
from ..io.images import to_array
from .split import split_column
from .store import FEATURES_INFO, TrainedClassifier, head_path, load_model

log = logging.getLogger(__name__)


# --- data -----------------------------------------------------------------------------------

def with_split(df: DataFrame, train: float, validation: float, salt: str) -> DataFrame:
    return df.withColumn("split", split_column("product_id", train, validation, salt))


def with_pixels(products: DataFrame, height: int, width: int) -> DataFrame:
    """`pixels`: the decoded, resized RGB image as raw uint8 bytes (height x width x 3); rows
    whose image does not decode are dropped here (ingest has already rejected such files)."""
    @F.pandas_udf(T.BinaryType())
    def decode(images: pd.Series) -> pd.Series:
        def one(data):
            try:
                return to_array(bytes(data), height, width).tobytes()
            except Exception:  # PIL raises many types for bad data
                return None
        return images.map(one)

    return (products.withColumn("pixels", decode("image")).drop("image")
            .where(F.col("pixels").isNotNull()))


def label_list(products: DataFrame, label_column: str) -> list[str]:
    """Every class present in the catalogue, sorted: the model's outputs, in order. Classes too
    small to learn (one member) stay in the list, so they are predicted-for and reported."""
    rows = products.select(label_column).where(F.col(label_column).isNotNull()).distinct()
    return sorted(r[0] for r in rows.collect())


def with_label_index(df: DataFrame, label_column: str, labels: list[str]) -> DataFrame:
    """`label` (int) = position of the row's class in `labels`; rows without a class dropped."""
    mapping = F.create_map(*[F.lit(x) for pair in enumerate(labels) for x in pair[::-1]])
    return df.where(F.col(label_column).isNotNull()).withColumn(
        "label", mapping[F.col(label_column)].cast("int"))


def class_weights(counts: dict[int, int], mode: str) -> dict[int, float]:
    """Per-class loss weights from training counts. "balanced": n / (k * n_c), every class
    weighs the same in total; "sqrt": its square root, a gentler push towards small classes;
    "none": 1. Scaled so that the mean weight per training example is 1 (the learning rate
    keeps its meaning)."""
    if mode == "none":
        return {c: 1.0 for c in counts}
    power = {"balanced": 1.0, "sqrt": 0.5}.get(mode)
    if power is None:
        raise ValueError(f"class weights must be none, balanced or sqrt, not {mode!r}")
    n, k = sum(counts.values()), len(counts)
    raw = {c: (n / (k * m)) ** power for c, m in counts.items()}
    mean = sum(raw[c] * m for c, m in counts.items()) / n
    return {c: w / mean for c, w in raw.items()}


# --- models ---------------------------------------------------------------------------------

def build_head(input_dim: int, n_classes: int, dense_units: list[int], dropout: float,
               seed: int = 0):
    """features -> dense layers (ReLU, dropout) -> softmax over the classes."""
    import keras

    features = keras.Input((input_dim,), name="features")
    x = features
    for i, units in enumerate(dense_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        x = keras.layers.Dropout(dropout, seed=seed + i, name=f"dropout_{i}")(x)
    probabilities = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(features, probabilities, name="head")


def assemble_classifier(feature_model, head, height: int, width: int):
    """Raw RGB images of any size -> class probabilities."""
    import keras

    images = keras.Input((None, None, 3), dtype="float32", name="images")
    resized = keras.layers.Resizing(height, width, interpolation="bilinear", antialias=True,
                                    name="resize")(images)
    return keras.Model(images, head(feature_model(resized)), name="classifier")


def unfreeze_from(feature_model, first_layer: str) -> list[str]:
    """Make `first_layer` of the backbone and every layer after it trainable; the names."""
    backbone = next(layer for layer in feature_model.layers if hasattr(layer, "layers"))
    names = [layer.name for layer in backbone.layers]
    if first_layer not in names:
        raise ValueError(f"{backbone.name} has no layer {first_layer!r}; its layers: "
                         f"{', '.join(names)}")
    backbone.trainable = True
    start = names.index(first_layer)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start
    return names[start:]


def fit(model, train_feed, validation_feed, transform, batch_size: int, epochs: int,
        learning_rate: float, patience: int, seed: int, weights: dict[int, float]):
    """Compile and fit through the feed; early stopping on validation loss with the best
    weights restored. Class weights apply to the training loss only: validation loss and both
    accuracies are on the natural class distribution, the one the model will meet. Returns
    the Keras history dict."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                         restore_best_weights=True)
    with train_feed.dataset(batch_size, epochs=None, shuffle=True,
                            transform=transform(weights), seed=seed) as train_ds, \
            validation_feed.dataset(batch_size, epochs=None, shuffle=False,
                                    transform=transform(None)) as validation_ds:
        history = model.fit(
            train_ds, epochs=epochs, steps_per_epoch=-(-len(train_feed) // batch_size),
            validation_data=validation_ds,
            validation_steps=-(-len(validation_feed) // batch_size),
            callbacks=[stop, epoch_progress()], shuffle=False, verbose=0)
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def feature_batch_transform(weights: dict[int, float] | None):
    """Petastorm row batch -> (features, label[, sample weight by class])."""
    return _with_weights(lambda batch: batch.embedding, weights)


def pixel_batch_transform(height: int, width: int):
    """A transform factory like `feature_batch_transform`, for rows of raw uint8 pixels."""
    import tensorflow as tf

    def images(batch):
        pixels = tf.io.decode_raw(batch.pixels, tf.uint8)
        return tf.cast(tf.reshape(pixels, (-1, height, width, 3)), tf.float32)
    return lambda weights: _with_weights(images, weights)


def _with_weights(inputs, weights: dict[int, float] | None):
    import tensorflow as tf

    if weights is None:
        return lambda batch: (inputs(batch), batch.label)
    table = tf.constant([weights[i] for i in range(len(weights))], dtype=tf.float32)
    return lambda batch: (inputs(batch), batch.label, tf.gather(table, batch.label))


def epoch_progress():
    """A callback logging one line per epoch (Keras' bar is unreadable in Spark logs)."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items())
                             if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
            log.info("  epoch %d: %s (%.1f s)", epoch + 1, shown, time.time() - self.started)
    return EpochProgress()


# --- prediction -----------------------------------------------------------------------------

def predictions_frame(probabilities: np.ndarray, labels: list[str]) -> pd.DataFrame:
    best = probabilities.argmax(axis=1)
    return pd.DataFrame({
        "predicted": [labels[i] for i in best],
        "probability": probabilities[np.arange(len(best)), best].astype("float32"),
        "probabilities": list(probabilities.astype("float32")),
    })


PREDICT_SCHEMA = T.StructType([
    T.StructField("predicted", T.StringType()),
    T.StructField("probability", T.FloatType()),
    T.StructField("probabilities", T.ArrayType(T.FloatType())),
    T.StructField("error", T.StringType()),
])
_LOADED: dict[str, object] = {}


def cached_classifier(model_path: str, threads: int):
    """This Python worker's copy of the saved model, loaded on first use (`model_path` is
    content-named: one path, one model)."""
    model = _LOADED.get(model_path)
    if model is None:
        limit_tf_threads(threads)
        model = _LOADED[model_path] = load_model(model_path)
    return model


def classify_batch(model, images: list[bytes], labels: list[str], height: int, width: int,
                   batch_size: int) -> pd.DataFrame:
    """Decode and classify a batch; an image that fails to decode gets an error, not a crash.
    Images are resized exactly as featurize resizes them, so the model's own Resizing layer is
    the identity and predictions match the features the head was trained on."""
    outputs, errors = run_on_images(model, images, height, width, batch_size, "predict")
    out = pd.DataFrame({"predicted": None, "probability": np.nan, "probabilities": None,
                        "error": errors}, index=range(len(images)))
    good = [i for i, p in enumerate(outputs) if p is not None]
    if good:
        found = predictions_frame(np.stack([outputs[i] for i in good]), labels)
        out.loc[good, "predicted"] = found["predicted"].to_numpy()
        out.loc[good, "probability"] = found["probability"].to_numpy()
        out.loc[good, "probabilities"] = pd.Series(found["probabilities"].tolist(), index=good)
    return out


def classify_embeddings(head, embeddings: list[np.ndarray], labels: list[str]) -> pd.DataFrame:
    """PREDICT_SCHEMA columns for a batch of stored feature vectors, by the model's head."""
    probabilities = np.asarray(head.predict_on_batch(np.stack(embeddings).astype("float32")),
                               dtype="float32")
    out = predictions_frame(probabilities, labels)
    finite = np.isfinite(probabilities).all(axis=1)
    out["error"] = np.where(finite, None, "prediction is not finite (NaN/inf)")
    out.loc[~finite, ["predicted", "probabilities"]] = None
    out.loc[~finite, "probability"] = np.nan
    return out


def classify_features(features: DataFrame, trained: TrainedClassifier, threads: int = 1) -> DataFrame:
    """Like `classify_images`, from the `embedding` column: the model's head applied to feature
    vectors made with the model's feature settings (`features_settings`)."""
    head_file, labels = ship_file(features.sparkSession, head_path(trained)), trained.labels

    @F.pandas_udf(PREDICT_SCHEMA)
    def classify(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for embeddings in batches:  # the head is loaded on the first batch, as in featurize
            head = cached_classifier(SparkFiles.get(head_file), threads)
            yield classify_embeddings(head, list(embeddings), labels)

    out = features.withColumn("_classified", classify("embedding"))
    return out.select(*[c for c in features.columns if c != "embedding"], "_classified.*")


def features_settings(trained: TrainedClassifier) -> dict | None:
    """The settings of the stored features that the model's head takes as they are: those
    it was trained on. None where the model's backbone is not the one that made them
    (fine-tuned) or the model does not say (older models): such a model sees images only."""
    if trained.info.get("mode", "head") != "head":
        return None
    return trained.info.get(FEATURES_INFO)


# The `input` column of classified products: what each prediction was computed from.
FROM_FEATURES, FROM_IMAGE = "features", "image"


def classify_products(products: DataFrame, features: DataFrame | None,
                      trained: TrainedClassifier, batch_size: int, threads: int,
                      rows_per_partition: int) -> DataFrame:
    """`products` (product_id, sha256, image and columns to keep) with PREDICT_SCHEMA's
    columns and `input`: "features" where `features` (the features table) holds a usable row
    of the product's image (same sha256) made with the model's feature settings: the head
    alone classifies it, as the whole model would (same numbers before the head); "image"
    elsewhere: the whole model on the decoded image."""
    settings = features_settings(trained)
    by_image, by_features = products, None
    if features is not None and settings is not None:
        stored = (features.filter(settings_equal(settings)).filter(usable_embedding())
                  .select("product_id", "sha256", "embedding"))
        by_features = products.drop("image").join(stored, ["product_id", "sha256"])
        by_image = products.join(stored, ["product_id", "sha256"], "left_anti")
    n = by_image.count()
    parts = []
    if by_features is not None:
        parts.append(classify_features(by_features.drop("sha256"), trained, threads)
                     .withColumn("input", F.lit(FROM_FEATURES)))
    if n or by_features is None:
        spread = spread_images(by_image.drop("sha256"), n, rows_per_partition)
        parts.append(classify_images(spread, trained, batch_size, threads)
                     .withColumn("input", F.lit(FROM_IMAGE)))
    return reduce(DataFrame.unionByName, parts)


def classify_images(images: DataFrame, trained: TrainedClassifier, batch_size: int,
                    threads: int = 1, image_col: str = "image") -> DataFrame:
    """Adds predicted, probability (of the predicted class), probabilities (per label, in
    `trained.labels` order) and error, in an iterator pandas UDF with the saved model, which
    the driver ships to the executors."""
    model_file, labels = ship_file(images.sparkSession, trained.model_path), trained.labels
    height, width = trained.input_size

    @F.pandas_udf(PREDICT_SCHEMA)
    def classify(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for content in batches:  # the model is loaded on the first batch, as in featurize
            model = cached_classifier(SparkFiles.get(model_file), threads)
            yield classify_batch(model, list(content), labels, height, width, batch_size)

    out = images.withColumn("_classified", classify(image_col))
    return out.select(*[c for c in images.columns if c != image_col], "_classified.*")
