"""What a combination is measured by besides its featurize, train and evaluate steps:
neighbours precision computed in memory, and shopper-photo queries against the catalogue."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..features.featurize import FeatureModelSpec, driver_feature_model, run_on_images
from ..similarity.knn import nearest_neighbours
from ..similarity.relevance import relevance_metrics
from .photos import KINDS, altered_photo, own_product_ranks, rank_metrics
from .table import PRECISION_K, neighbour_metric


def neighbour_precision(features: DataFrame, products: DataFrame, block_rows: int,
                        broadcast_max_bytes: int) -> dict[str, float]:
    """precision@5 (and recall, mAP) of every product's exact top-5 by `features` (usable
    rows of one feature model), per relevance definition, computed in memory as the
    neighbours and evaluate_neighbours steps would (no table written)."""
    result, _ = nearest_neighbours(features, PRECISION_K, block_rows, broadcast_max_bytes)
    scores = relevance_metrics(result, products, PRECISION_K)
    result.unpersist()
    return {neighbour_metric(column, row["relevance"]): float(row[column])
            for _, row in scores.iterrows() for column in scores.columns
            if column not in ("relevance", "queries", "singletons")}


def photo_sample(products: DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` products (product_id, image) chosen by a seeded hash of their id: the same for
    every combination."""
    return (products.select("product_id", "image")
            .orderBy(F.xxhash64(F.lit(seed), "product_id"), "product_id").limit(n).toPandas())


def photo_queries(features: DataFrame, spec: FeatureModelSpec, photos: pd.DataFrame,
                  seed: int) -> dict[str, float]:
    """Each sampled product's image altered as a shopper's photo (each alteration alone and
    all at once, `compare.photos`), featurized on the driver and ranked against the whole
    catalogue's features: the share found at rank 1 and in the top 5; also the driver's
    images/s over these photos (the same images for every combination) and the dimension.
    `features`: the catalogue's usable rows of `spec`."""
    catalogue = features.select("product_id", "embedding").toPandas()
    ids = catalogue["product_id"].to_numpy()
    vectors = np.stack(catalogue["embedding"].to_numpy()).astype(np.float32)
    photos = photos[photos["product_id"].isin(ids)]
    model = driver_feature_model(spec)
    metrics = {"dimension": float(vectors.shape[1]), "photo.queries": float(len(photos))}
    if photos.empty:
        return metrics
    warm_up = [bytes(b) for b in photos["image"][:spec.batch_size]]
    run_on_images(model, warm_up, spec.height, spec.width, spec.batch_size, "compare")
    seconds, images = 0.0, 0
    for kind in KINDS:
        altered = [altered_photo(bytes(b), int(pid), seed, kind)
                   for pid, b in zip(photos["product_id"], photos["image"])]
        started = time.perf_counter()
        outputs, _ = run_on_images(model, altered, spec.height, spec.width, spec.batch_size,
                                   "compare")
        seconds += time.perf_counter() - started
        images += len(altered)
        good = [i for i, o in enumerate(outputs) if o is not None]
        ranks = own_product_ranks(np.stack([outputs[i] for i in good]),
                                  photos["product_id"].to_numpy()[good], vectors, ids)
        metrics |= rank_metrics(kind, ranks)
        metrics[f"photo.{kind}.failed"] = float(len(altered) - len(good))
    metrics["photo.images_per_second"] = images / seconds
    return metrics
