"""Which VGG16 feature recipe lets a shopper's photo find its own product (issue 14's targets).

One forward pass per pixel filter over a real slice (a hash-chosen catalogue of --catalogue
products, --photos of them also queried as altered photos, `compare.photos`), keeping the
block 3, 4 and 5 maps; every recipe is then scored from those maps: the pixel filter
(applied to catalogue and photos alike; PIL's blur, which approximates the Gaussian that
`featurize.blur` computes in the model), pooling (global average, max, GeM p=3), layers, and
what is done to the pooled vectors before cosine (nothing, centring on the catalogue mean,
PCA whitening fit on the catalogue). Scored: the share of photos whose product ranks first
(per alteration, and all four at once: "shopper") and P@5 same articleType over the catalogue
(leave-one-out, images identical to the query's excluded). A slice ranks against fewer
products than the whole catalogue, so the absolute figures are higher than `compare`'s; the
recipes compare within one run.

    .venv/bin/python bench/probe_photos.py [--catalogue 6000] [--photos 300] [--size 80x60]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_line, real_data_args  # bench/machine.py
from PIL import Image, ImageFilter  # noqa: E402

from lookbook.compare.photos import KINDS, altered_photo, own_product_ranks  # noqa: E402
from lookbook.config import parse_size  # noqa: E402
from lookbook.features.backbones import get_backbone, preprocess, resolve_weights  # noqa: E402
from lookbook.io.images import to_array  # noqa: E402
from lookbook.io.styles import parse_styles_line  # noqa: E402
from lookbook.similarity.knn import l2_normalise  # noqa: E402

LAYERS = ("block3_conv3", "block4_conv3", "block5_conv3")
FILTERS = {
    "none": lambda img: img,
    "blur1": lambda img: img.filter(ImageFilter.GaussianBlur(1)),
    "half": lambda img: img.resize((img.width // 2, img.height // 2), Image.BILINEAR)
                           .resize(img.size, Image.BILINEAR),
}
POOLS = ("avg", "max", "gem")
RECIPES = [  # (pool, layers)
    ("avg", ("block4_conv3", "block5_conv3")),  # the default
    ("avg", ("block5_conv3",)),
    ("avg", ("block3_conv3", "block4_conv3", "block5_conv3")),
    ("max", ("block4_conv3", "block5_conv3")),
    ("max", ("block5_conv3",)),
    ("gem", ("block4_conv3", "block5_conv3")),
    ("gem", ("block5_conv3",)),
]
POSTS = ("raw", "centred", "pca-white")


def catalogue_slice(data_dir: Path, n: int, seed: int) -> list[dict]:
    """n good styles.csv rows with an image, ordered by a seeded hash of the id."""
    rows = []
    for line in (data_dir / "styles.csv").read_text().splitlines()[1:]:
        row = parse_styles_line(line)
        if row["reason"] is None and (data_dir / "images" / f"{row['product_id']}.jpg").exists():
            rows.append(row)
    rows.sort(key=lambda r: hashlib.sha256(f"{seed}:{r['product_id']}".encode()).hexdigest())
    return rows[:n]


def pixels(data: bytes, height: int, width: int, pixel_filter: str) -> np.ndarray:
    """Decoded and resized as featurize does (`to_array`), then filtered."""
    img = Image.fromarray(to_array(data, height, width))
    return np.asarray(FILTERS[pixel_filter](img), dtype=np.float32)


def pooled_maps(model, preprocessing: str, images: list[np.ndarray], batch: int = 64) -> dict:
    """{(layer, pool): (N, channels)} for every layer of LAYERS and pool of POOLS."""
    out: dict = {}
    for start in range(0, len(images), batch):
        maps = model.predict_on_batch(preprocess(np.stack(images[start:start + batch]), preprocessing))
        for layer, m in zip(LAYERS, maps):
            m = np.asarray(m, dtype=np.float32)
            gem = np.cbrt(np.mean(np.maximum(m, 1e-6) ** 3, axis=(1, 2)))
            for pool, v in (("avg", m.mean(axis=(1, 2))), ("max", m.max(axis=(1, 2))), ("gem", gem)):
                out.setdefault((layer, pool), []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


def vectors(maps: dict, pool: str, layers: tuple[str, ...]) -> np.ndarray:
    # Raw poolings concatenated, as build_feature_model does.
    return np.hstack([maps[(layer, pool)] for layer in layers])


def post_process(catalogue: np.ndarray, queries: list[np.ndarray], post: str):
    if post == "raw":
        return catalogue, queries
    mean = catalogue.mean(axis=0)
    if post == "centred":
        return catalogue - mean, [q - mean for q in queries]
    # PCA whitening on the catalogue, square-root-damped eigenvalues (robust to tiny ones).
    x = l2_normalise(catalogue) - l2_normalise(catalogue).mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    keep = min(512, len(s))
    w = vt[:keep].T / np.sqrt(s[:keep] + 1e-6)
    centre = l2_normalise(catalogue).mean(axis=0)
    return (l2_normalise(catalogue) - centre) @ w, [(l2_normalise(q) - centre) @ w for q in queries]


def precision_at_5(catalogue: np.ndarray, types: np.ndarray, digests: np.ndarray) -> float:
    x = l2_normalise(catalogue)
    hits = []
    for start in range(0, len(x), 1024):
        scores = x[start:start + 1024] @ x.T
        rows = np.arange(len(scores))
        scores[digests[start:start + 1024, None] == digests[None, :]] = -np.inf  # self, copies
        top = np.argpartition(-scores, 5, axis=1)[:, :5]
        hits.append((types[top] == types[start + rows, None]).mean(axis=1))
    return float(np.concatenate(hits).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    real_data_args(parser, n=None)
    parser.add_argument("--catalogue", type=int, default=6000)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--size", default="80x60")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filters", default=",".join(FILTERS))
    args = parser.parse_args()
    print(cpu_line())
    height, width = parse_size(args.size)
    data_dir = Path(args.data_dir)
    rows = catalogue_slice(data_dir, args.catalogue, args.seed)
    ids = np.array([r["product_id"] for r in rows])
    types = np.array([r["article_type"] for r in rows])
    data = [(data_dir / "images" / f"{pid}.jpg").read_bytes() for pid in ids]
    digests = np.array([hashlib.sha256(d).hexdigest() for d in data])
    photo_ids = ids[:args.photos]
    photos = {kind: [altered_photo(data[i], int(photo_ids[i]), args.seed, kind)
                     for i in range(len(photo_ids))] for kind in KINDS}
    resolved = resolve_weights("vgg16", "imagenet", os.path.expanduser("~/.cache/lookbook/weights"))
    base = get_backbone("vgg16").constructor(include_top=False, weights=resolved.path,
                                             input_shape=(height, width, 3))
    model = keras.Model(base.input, [base.get_layer(name).output for name in LAYERS])
    print(f"catalogue {len(ids):,} products, {len(photo_ids)} photos x {len(KINDS)} kinds, "
          f"VGG16 {height}x{width}, weights {resolved.source}")
    header = f"{'filter':6} {'pool':4} {'layers':15} {'post':9} {'P@5':>6} " + " ".join(
        f"{k:>8}" for k in KINDS)
    print(header)
    for pixel_filter in args.filters.split(","):
        started = time.time()
        maps = pooled_maps(model, resolved.preprocessing,
                           [pixels(d, height, width, pixel_filter) for d in data])
        photo_maps = {kind: pooled_maps(model, resolved.preprocessing,
                                        [pixels(d, height, width, pixel_filter) for d in imgs])
                      for kind, imgs in photos.items()}
        seconds = time.time() - started
        for pool, layers in RECIPES:
            cat = vectors(maps, pool, layers)
            queries = [vectors(photo_maps[kind], pool, layers) for kind in KINDS]
            for post in POSTS:
                c, qs = post_process(cat, queries, post)
                p5 = precision_at_5(c, types, digests)
                rank1 = [float(np.mean(own_product_ranks(q, photo_ids, c, ids) == 1)) for q in qs]
                label = "+".join(name.split("_")[0].removeprefix("block") for name in layers)
                print(f"{pixel_filter:6} {pool:4} {label:15} {post:9} {p5:6.3f} "
                      + " ".join(f"{r:8.3f}" for r in rank1), flush=True)
        print(f"  ({pixel_filter}: {seconds:.0f} s forward passes)", flush=True)


if __name__ == "__main__":
    main()
