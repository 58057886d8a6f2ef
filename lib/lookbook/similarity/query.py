"""The k catalogue products most similar to one query vector: a scan of the features in which
each partition keeps its own top k and the driver merges the partial lists."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from .knn import RANKED_SCHEMA, l2_normalise, ranked


def most_similar(features: DataFrame, query: np.ndarray, k: int) -> pd.DataFrame:
    """(neighbour_id, score) of the k products whose `embedding` is most cosine-similar to
    `query`, best first, ties to the smaller id. `features` has product_id and embedding.
    Rows whose embedding has no direction (a NaN/inf, or all zeros: in tables written before
    featurize rejected them) are never results; neither is such a query."""
    query = np.asarray(query, dtype=np.float32)
    if not usable(query[None, :])[0]:
        raise ValueError("the query vector is not finite (NaN/inf) or all zeros")
    unit = l2_normalise(query[None, :])[0]

    def scan(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if batch.empty:
                continue
            vectors = np.stack(batch["embedding"].to_numpy()).astype(np.float32)
            keep = usable(vectors)
            scores = (l2_normalise(vectors[keep]) @ unit).astype("float32")
            best = ranked(pd.DataFrame({"product_id": 0,
                                        "neighbour_id": batch["product_id"].to_numpy()[keep],
                                        "score": scores})).head(k)
            yield best

    found = features.select("product_id", "embedding").mapInPandas(scan, RANKED_SCHEMA).toPandas()
    return ranked(found).head(k)[["neighbour_id", "score"]].reset_index(drop=True)


def usable(vectors: np.ndarray) -> np.ndarray:
    """Per row: every value finite and not all zeros (a direction to compare)."""
    return np.isfinite(vectors).all(axis=1) & (vectors != 0).any(axis=1)
