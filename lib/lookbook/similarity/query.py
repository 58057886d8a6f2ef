"""The k catalogue products most similar to one query vector: a scan of the features in which
each partition keeps its own top k and the driver merges the partial lists."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from .knn import PAIR_SCHEMA, l2_normalise, ranked


def most_similar(features: DataFrame, query: np.ndarray, k: int) -> pd.DataFrame:
    """(neighbour_id, score) of the k products whose `embedding` is most cosine-similar to
    `query`, best first, ties to the smaller id. `features` has product_id and embedding."""
    unit = l2_normalise(np.asarray(query, dtype=np.float32)[None, :])[0]

    def scan(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            vectors = l2_normalise(np.stack(batch["embedding"].to_numpy()))
            scores = (vectors @ unit).astype("float32")
            best = ranked(pd.DataFrame({"product_id": 0, "neighbour_id": batch["product_id"],
                                        "score": scores})).head(k)
            yield best.drop(columns="rank")

    found = features.select("product_id", "embedding").mapInPandas(scan, PAIR_SCHEMA).toPandas()
    return ranked(found).head(k)[["neighbour_id", "score"]].reset_index(drop=True)
