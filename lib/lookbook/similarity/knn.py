"""Exact top-k cosine neighbours of every product, blocked, in bounded memory.

Vectors are L2-normalised and cut into blocks of about `block_rows`. Every (query block,
candidate block) pair is one Spark task: one dense matrix product (BLAS) and a running top-k
per query row; partial lists are merged per query. The N x N matrix never exists, and nothing
but counts reaches the driver. Where all candidates fit under `broadcast_max_bytes`, they are
broadcast instead and each query block scans them in one task (no cartesian shuffle).

Exact: the result is brute force's top-k with ties broken by the smaller neighbour id. A
product is never its own neighbour. Products with identical image bytes (same sha256) have
similarity exactly 1.0 by definition (float32 rounding would otherwise give 0.99999994).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

PAIR_SCHEMA = T.StructType([
    T.StructField("product_id", T.LongType()),
    T.StructField("neighbour_id", T.LongType()),
    T.StructField("score", T.FloatType()),
])
BLOCK_SCHEMA = T.StructType([
    T.StructField("block", T.IntegerType()),
    T.StructField("ids", T.BinaryType()),  # int64[n]
    T.StructField("vectors", T.BinaryType()),  # float32[n, d], L2-normalised
    T.StructField("images", T.BinaryType()),  # int64[n]: hash of the image sha256
    T.StructField("groups", T.BinaryType()),  # int64[n]: candidates must share it
])


# --- pure numpy -----------------------------------------------------------------------------

def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (similarity 0 to everything)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def block_top_k(query_ids: np.ndarray, queries: np.ndarray, query_images: np.ndarray,
                query_groups: np.ndarray, candidate_ids: np.ndarray, candidates: np.ndarray,
                candidate_images: np.ndarray, candidate_groups: np.ndarray, k: int,
                exclude_same_image: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query row's k best candidates: (query_id, neighbour_id, score) arrays, by score
    descending then neighbour id ascending. Self, other groups and (optionally) identical
    images are never candidates."""
    scores = queries @ candidates.T
    same_image = query_images[:, None] == candidate_images[None, :]
    scores[same_image] = 1.0
    excluded = query_ids[:, None] == candidate_ids[None, :]
    excluded |= query_groups[:, None] != candidate_groups[None, :]
    if exclude_same_image:
        excluded |= same_image
    scores[excluded] = -np.inf
    return top_k_rows(query_ids, candidate_ids, scores, k)


def top_k_rows(query_ids: np.ndarray, candidate_ids: np.ndarray, scores: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top k of every row of `scores` (-inf = not a candidate), ties to the smaller id.
    Overwrites `scores`. k rounds of argmax: 25x faster than a partition plus a sort per row
    on a 4096 x 4096 block (0.04 s against 1.05 s), which had cost 4x the matrix product."""
    n, m = scores.shape
    take = min(k, m)
    if take == 0 or n == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    if not np.all(candidate_ids[1:] > candidate_ids[:-1]):  # blocks_of packs them sorted
        order = np.argsort(candidate_ids, kind="stable")
        scores, candidate_ids = scores[:, order], candidate_ids[order]
    rows = np.arange(n)
    cols = np.empty((n, take), dtype=np.int64)
    best = np.empty((n, take), dtype=np.float32)
    for t in range(take):
        # argmax takes the first maximum: with columns in id order, ties go to the smaller id.
        cols[:, t] = scores.argmax(axis=1)
        best[:, t] = scores[rows, cols[:, t]]
        scores[rows, cols[:, t]] = -np.inf
    found = np.isfinite(best)
    queries = np.repeat(query_ids.astype(np.int64), take).reshape(n, take)
    return queries[found], candidate_ids[cols][found].astype(np.int64), best[found]


def ranked(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs in result order with rank 1..k per product."""
    pairs = pairs.sort_values(["product_id", "score", "neighbour_id"],
                              ascending=[True, False, True], kind="stable")
    pairs["rank"] = pairs.groupby("product_id").cumcount() + 1
    return pairs.reset_index(drop=True)[["product_id", "rank", "neighbour_id", "score"]]


# --- Spark ----------------------------------------------------------------------------------

def blocks_of(features: DataFrame, block_rows: int, group_columns: list[str]) -> DataFrame:
    """One row per block: ids, normalised vectors, image hashes and group keys as raw arrays.
    `features` has product_id, embedding, sha256 and the group columns."""
    n = features.count()
    n_blocks = max(1, -(-n // block_rows))
    group = (F.xxhash64(*[F.coalesce(F.col(c).cast("string"), F.lit("\0")) for c in group_columns])
             if group_columns else F.lit(0).cast("long"))
    rows = features.select(
        (F.pmod(F.xxhash64("product_id"), F.lit(n_blocks))).cast("int").alias("block"),
        "product_id", "embedding", F.xxhash64("sha256").alias("image"), group.alias("group"))

    def pack(block: pd.DataFrame) -> pd.DataFrame:
        block = block.sort_values("product_id")  # candidates in id order: see top_k_rows
        vectors = l2_normalise(np.stack(block["embedding"].to_numpy()))
        return pd.DataFrame({
            "block": [int(block["block"].iloc[0])],
            "ids": [block["product_id"].to_numpy(np.int64).tobytes()],
            "vectors": [vectors.tobytes()],
            "images": [block["image"].to_numpy(np.int64).tobytes()],
            "groups": [block["group"].to_numpy(np.int64).tobytes()],
        })

    return rows.groupBy("block").applyInPandas(pack, BLOCK_SCHEMA).repartition(n_blocks)


def unpack(row, prefix: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids = np.frombuffer(row[prefix + "ids"], dtype=np.int64)
    vectors = np.frombuffer(row[prefix + "vectors"], dtype=np.float32).reshape(len(ids), -1)
    return (ids, vectors, np.frombuffer(row[prefix + "images"], dtype=np.int64),
            np.frombuffer(row[prefix + "groups"], dtype=np.int64))


def top_k_blocked(blocks: DataFrame, k: int, exclude_same_image: bool) -> DataFrame:
    """Every (query block, candidate block) pair is a row, and a task: partial top-k lists."""
    candidates = blocks.select(*[F.col(c).alias(f"c_{c}") for c in blocks.columns])
    pairs = blocks.crossJoin(candidates)

    def partial(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for _, row in batch.iterrows():
                q, n, s = block_top_k(*unpack(row), *unpack(row, "c_"), k, exclude_same_image)
                yield pd.DataFrame({"product_id": q, "neighbour_id": n, "score": s})

    return pairs.mapInPandas(partial, PAIR_SCHEMA)


def top_k_broadcast(blocks: DataFrame, k: int, exclude_same_image: bool) -> DataFrame:
    """All candidates broadcast once; each query block scans them in one task."""
    sc = blocks.sparkSession.sparkContext
    everything = sc.broadcast([tuple(unpack(r.asDict())) for r in blocks.collect()])

    def scan(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for _, row in batch.iterrows():
                query = unpack(row)
                parts = [block_top_k(*query, *candidate, k, exclude_same_image)
                         for candidate in everything.value]
                pairs = pd.DataFrame({"product_id": np.concatenate([p[0] for p in parts]),
                                      "neighbour_id": np.concatenate([p[1] for p in parts]),
                                      "score": np.concatenate([p[2] for p in parts])})
                yield ranked(pairs).query(f"rank <= {k}").drop(columns="rank")

    return blocks.mapInPandas(scan, PAIR_SCHEMA)


def merge_top_k(pairs: DataFrame, k: int) -> DataFrame:
    """Partial lists -> each product's k best: rank 1..k by score, then smaller id."""
    order = Window.partitionBy("product_id").orderBy(F.desc("score"), F.asc("neighbour_id"))
    return (pairs.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)
            .select("product_id", "rank", "neighbour_id", "score"))


def nearest_neighbours(features: DataFrame, k: int, block_rows: int,
                       broadcast_max_bytes: int, group_columns: list[str] | None = None,
                       exclude_same_image: bool = False) -> tuple[DataFrame, str]:
    """(product_id, rank, neighbour_id, score) for every product, and which path ran."""
    spark = features.sparkSession
    blocks = blocks_of(features, block_rows, group_columns or []).persist()
    sizes = blocks.select(F.sum(F.length("vectors")).alias("bytes"), F.count("*").alias("n")).first()
    # One pair (two blocks of vectors) per Arrow batch: the rows are large.
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "1")
    try:
        if (sizes["bytes"] or 0) <= broadcast_max_bytes:
            path = f"broadcast ({sizes['n']} query blocks, {sizes['bytes'] / 2**20:.0f} MiB of candidates)"
            result = merge_top_k(top_k_broadcast(blocks, k, exclude_same_image), k)
        else:
            path = f"blocked ({sizes['n']} x {sizes['n']} block pairs)"
            result = merge_top_k(top_k_blocked(blocks, k, exclude_same_image), k)
        result = result.persist()
        result.count()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
        blocks.unpersist()
    return result, path
