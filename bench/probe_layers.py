"""Which VGG16 layers make the best features for the masterCategory head, at one input size.

One forward pass over a real slice (all validation and test products of the hash split, plus
--train products of the train part) gives several candidate feature vectors; the same dense
head (256, 128, dropout 0.3, sqrt class weights, early stopping) is trained on each and
scored on the test part. This chose the default layers (block4_conv3 + block5_conv3 global
averages): on 12,000 train products at 80x60 they made 72 test errors against 146 for the
global average of block 5 alone.

    .venv/bin/python bench/probe_layers.py --data-dir ../shared/data/fashion [--train 12000]
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_line, real_data_args  # bench/machine.py

from lookbook.features.backbones import resolve_weights  # noqa: E402
from lookbook.features.feature_model import build_feature_model  # noqa: E402
from lookbook.io.images import to_array  # noqa: E402
from lookbook.models import classifier as clf  # noqa: E402
from lookbook.models.split import split_of  # noqa: E402

MAPS = ("block4_conv3", "block5_conv3", "block5_pool")


def candidate_features(model_maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    gap = {name: m.mean(axis=(1, 2)) for name, m in model_maps.items()}
    gmp = {name: m.max(axis=(1, 2)) for name, m in model_maps.items()}
    return {
        "avg block5_pool (Keras pooling='avg')": gap["block5_pool"],
        "flatten block5_pool": model_maps["block5_pool"].reshape(len(gap["block5_pool"]), -1),
        "avg block5_conv3": gap["block5_conv3"],
        "avg+max block5_conv3": np.hstack([gap["block5_conv3"], gmp["block5_conv3"]]),
        "avg block4_conv3 + avg block5_conv3": np.hstack([gap["block4_conv3"], gap["block5_conv3"]]),
        "avg+max block4_conv3 + block5_conv3": np.hstack([gap["block4_conv3"], gmp["block4_conv3"],
                                                           gap["block5_conv3"], gmp["block5_conv3"]]),
    }


def head_errors(x: np.ndarray, y: np.ndarray, part: np.ndarray, classes: int) -> int:
    keras.utils.set_random_seed(0)
    train, validation, test = (part == p for p in ("train", "validation", "test"))
    counts = {c: int((y[train] == c).sum()) for c in range(classes) if (y[train] == c).any()}
    weights = clf.class_weights(counts, "sqrt")
    head = clf.build_head(x.shape[1], classes, [256, 128], 0.3)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    head.fit(x[train], y[train], sample_weight=np.array([weights.get(c, 1.0) for c in y[train]]),
             batch_size=256, epochs=60, validation_data=(x[validation], y[validation]),
             callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)],
             verbose=0)
    return int((head.predict(x[test], verbose=0).argmax(axis=1) != y[test]).sum())


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    real_data_args(parser, n=None)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=60)
    parser.add_argument("--weights-cache", default="~/.cache/lookbook/weights")
    args = parser.parse_args()
    data = Path(args.data_dir)
    with open(data / "styles.csv", newline="") as f:
        rows = [r[:9] for r in list(csv.reader(f))[1:]]  # 22 names hold unquoted commas
    rows = [r for r in rows if (data / "images" / f"{r[0]}.jpg").exists()]
    parts = np.array([split_of(int(r[0])) for r in rows])
    rng = np.random.default_rng(0)
    train = rng.permutation(np.flatnonzero(parts == "train"))[:args.train]
    chosen = np.sort(np.concatenate([train, np.flatnonzero(parts != "train")]))
    labels = sorted({r[2] for r in rows})
    y = np.array([labels.index(rows[i][2]) for i in chosen])

    resolved = resolve_weights("vgg16", "imagenet", str(Path(args.weights_cache).expanduser()))
    vgg = build_feature_model("vgg16", resolved, args.height, args.width).get_layer("vgg16")
    maps = keras.Model(vgg.input, [vgg.get_layer(n).output for n in MAPS])
    from lookbook.features.backbones import preprocess

    started, outputs = time.time(), {n: [] for n in MAPS}
    for start in range(0, len(chosen), 256):
        batch = np.stack([to_array((data / "images" / f"{rows[i][0]}.jpg").read_bytes(),
                                   args.height, args.width) for i in chosen[start:start + 256]])
        for name, out in zip(MAPS, maps.predict_on_batch(preprocess(batch.astype("float32"), "torch"))):
            outputs[name].append(np.asarray(out))
    print(f"{len(chosen):,} images ({len(train):,} train) at {args.height}x{args.width} in "
          f"{time.time() - started:.0f} s; test part {int((parts[chosen] == 'test').sum()):,}")
    for name, x in candidate_features({n: np.concatenate(v) for n, v in outputs.items()}).items():
        print(f"{name:40s} dim {x.shape[1]:5d}  test errors {head_errors(x, y, parts[chosen], len(labels))}",
              flush=True)


if __name__ == "__main__":
    main()
