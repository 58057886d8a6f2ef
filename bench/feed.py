"""Training-feed benchmark: the classifier head trained for epochs fed by Petastorm (the train
job's feed) against the same rows as in-memory numpy arrays, in one run, same model, same
batch size, same cores.

Data: the train part of a warehouse's features table with its labels (run ingest + featurize
first), or with --synthetic N, random 512-d vectors in 7 classes.
Timing: epoch 1 of each feed includes tracing the model; epochs 2..E are timed and averaged.
Prints seconds per epoch of each, the ratio Petastorm / numpy (target <= 1.25), and the
one-off cost of materialising the DataFrame for Petastorm.

    .venv/bin/python bench/feed.py --warehouse /tmp/wh [--epochs 4] [--batch-size 256]
    .venv/bin/python bench/feed.py --synthetic 40000
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import numpy as np  # noqa: E402
from machine import cpu_line  # bench/machine.py
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

from lookbook.config import FeaturizeSettings, SparkSettings, TensorflowSettings  # noqa: E402
from lookbook.io.catalog import Catalog  # noqa: E402
from lookbook.models import classifier as clf  # noqa: E402
from lookbook.models.feed import Feed  # noqa: E402
from lookbook.models.split import split_column  # noqa: E402
from lookbook.pipelines.feature_steps import configured_layers_label  # noqa: E402
from lookbook.session import build_spark  # noqa: E402


def training_rows(spark, args):
    if args.synthetic:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 7, args.synthetic)
        vectors = rng.normal(0, 1, (args.synthetic, 512)).astype("float32") + labels[:, None] * 0.05
        schema = T.StructType([T.StructField("embedding", T.ArrayType(T.FloatType())),
                               T.StructField("label", T.IntegerType())])
        return spark.createDataFrame(
            [(v.tolist(), int(y)) for v, y in zip(vectors, labels)], schema), 7
    tables = Catalog(spark, args.warehouse)
    products = tables.read("products")
    labels = clf.label_list(products, "master_category")
    labelled = clf.with_label_index(products.select("product_id", "master_category"),
                                    "master_category", labels)
    # The default feature settings' rows (a table may hold rows of several settings).
    layers = configured_layers_label(FeaturizeSettings())
    features = (tables.read("features")
                .where(F.col("layers") == layers).select("product_id", "embedding"))
    rows = (labelled.join(features, "product_id")
            .where(split_column("product_id") == "train").select("embedding", "label"))
    return rows, len(labels)


def timed_epochs(head, data, epochs: int, steps: int) -> list[float]:
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        head.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        times.append(time.perf_counter() - started)
    return times


def fresh_head(dim: int, classes: int):
    import keras

    keras.utils.set_random_seed(0)
    head = clf.build_head(dim, classes, [256, 128], 0.3)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    return head


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", default="warehouse")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    cores = os.cpu_count()
    spark = build_spark(SparkSettings(master=f"local[{cores}]", app_name="bench-feed"),
                        TensorflowSettings())
    import tensorflow as tf

    rows, classes = training_rows(spark, args)
    rows = rows.persist()
    n = rows.count()
    steps = -(-n // args.batch_size)

    # numpy baseline: the same rows collected into memory, the same transform's shape of data.
    table = rows.toPandas()
    x = np.stack(table["embedding"]).astype("float32")
    y = table["label"].to_numpy("int32")
    numpy_ds = (tf.data.Dataset.from_tensor_slices((x, y))
                .shuffle(4 * args.batch_size, seed=0).batch(args.batch_size).repeat()
                .prefetch(tf.data.AUTOTUNE))
    numpy_times = timed_epochs(fresh_head(x.shape[1], classes), numpy_ds,
                               args.epochs, steps)

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        feed = Feed(rows, Path(cache).as_uri())
        materialise = time.perf_counter() - started
        with feed.dataset(args.batch_size, epochs=None, shuffle=True,
                          transform=clf.feature_batch_transform(None)) as ds:
            petastorm_times = timed_epochs(fresh_head(x.shape[1], classes), ds,
                                           args.epochs, steps)
        feed.delete()
    spark.stop()

    numpy_epoch = float(np.mean(numpy_times[1:]))
    petastorm_epoch = float(np.mean(petastorm_times[1:]))
    print(f"\n{n:,} rows x {x.shape[1]} floats, batch {args.batch_size}, {steps} steps/epoch, "
          f"{cores} cores, epochs 2..{args.epochs} averaged")
    print(f"numpy in memory : {numpy_epoch:7.3f} s/epoch   (first epoch {numpy_times[0]:.3f} s)")
    print(f"petastorm feed  : {petastorm_epoch:7.3f} s/epoch   (first epoch "
          f"{petastorm_times[0]:.3f} s; materialising the DataFrame once: {materialise:.1f} s)")
    print(f"ratio petastorm / numpy: {petastorm_epoch / numpy_epoch:.2f}  (target <= 1.25)")


if __name__ == "__main__":
    main()
