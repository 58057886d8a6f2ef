"""Query by photo: catalogue images altered as a shopper's photo of the product would be, and
where the product itself then ranks among the whole catalogue. Pure helpers, no Spark.

Each alteration's parameters come from (seed, product id, name) alone, so every feature model
in a comparison is asked the same photos.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

from ..augment.transforms import WHITE, hash_unit
from ..io.images import to_rgb
from ..similarity.knn import l2_normalise

ALTERATIONS = ("crop", "tilt", "exposure", "jpeg")
SHOPPER = "shopper"  # all four at once
KINDS = (SHOPPER, *ALTERATIONS)
JPEG_QUALITY = 15  # heavy: a messaging app's recompression


def altered_photo(data: bytes, product_id: int, seed: int, kind: str) -> bytes:
    """The image as a shopper might photograph it: `kind` is one alteration or SHOPPER (all):
    crop to 70-85 % of each side at a random place, tilt by 4-10 degrees either way (white
    where the tilt exposes), exposure x0.6-0.75 or x1.3-1.5, heavy JPEG; PNG when no JPEG."""
    kinds = ALTERATIONS if kind == SHOPPER else (kind,)
    if any(k not in ALTERATIONS for k in kinds):
        raise ValueError(f"unknown alteration {kind!r}; valid: {', '.join(KINDS)}")

    def unit(name: str) -> float:
        return hash_unit(seed, product_id, name)

    img = to_rgb(data)
    if "crop" in kinds:
        w, h = img.size
        keep = 0.70 + 0.15 * unit("crop")
        cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
        left, top = round((w - cw) * unit("crop_x")), round((h - ch) * unit("crop_y"))
        img = img.crop((left, top, left + cw, top + ch))
    if "tilt" in kinds:
        degrees = (4 + 6 * unit("tilt")) * (1 if unit("tilt_sign") < 0.5 else -1)
        img = img.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=WHITE)
    if "exposure" in kinds:
        dark = unit("exposure_sign") < 0.5
        factor = 0.60 + 0.15 * unit("exposure") if dark else 1.30 + 0.20 * unit("exposure")
        img = ImageEnhance.Brightness(img).enhance(factor)
    out = io.BytesIO()
    if "jpeg" in kinds:
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(out, format="PNG")
    return out.getvalue()


def own_product_ranks(queries: np.ndarray, query_ids: np.ndarray, catalogue: np.ndarray,
                      catalogue_ids: np.ndarray, block_rows: int = 512) -> np.ndarray:
    """For each query vector, the rank of its own product (`query_ids`) among the catalogue
    by cosine similarity: 1 + the number of products that score strictly higher (a product
    with an identical image ties, and does not push it down). Every query's product must be
    in the catalogue."""
    position = {int(pid): i for i, pid in enumerate(catalogue_ids)}
    missing = [int(q) for q in query_ids if int(q) not in position]
    if missing:
        raise ValueError(f"query products not in the catalogue: {missing[:5]}")
    own = np.array([position[int(q)] for q in query_ids], dtype=np.int64)
    catalogue = l2_normalise(catalogue)
    queries = l2_normalise(queries)
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), block_rows):
        scores = queries[start:start + block_rows] @ catalogue.T
        rows = np.arange(len(scores))
        own_scores = scores[rows, own[start:start + block_rows]]
        ranks[start:start + block_rows] = 1 + (scores > own_scores[:, None]).sum(axis=1)
    return ranks


def rank_metrics(kind: str, ranks: np.ndarray) -> dict[str, float]:
    """The share of queries whose product came first, and within the top 5."""
    return {f"photo.{kind}.rank1": float(np.mean(ranks == 1)) if len(ranks) else float("nan"),
            f"photo.{kind}.top5": float(np.mean(ranks <= 5)) if len(ranks) else float("nan")}
