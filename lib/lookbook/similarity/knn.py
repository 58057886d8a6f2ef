"""Exact top-k cosine neighbours of every product, blocked, in bounded memory.

Vectors are L2-normalised and split into query blocks of at most `block_rows`. The candidates
are broadcast in chunks of at most `broadcast_max_bytes`, one pass a chunk, every query block a
task: FAISS's exact inner-product search (the BLAS kernel of `IndexFlatIP`) shortlists each
query's best candidates in the chunk; several passes' lists are merged per query. A worker holds
one query block, one chunk and FAISS's tile; the N x N matrix never exists. When everything is
one chunk (the real catalogue), the query blocks are ranges of that broadcast; otherwise they
are packed in Spark.

Exact: the result is brute force's top-k with ties broken by the smaller neighbour id. A
product is never its own neighbour. Products with identical image bytes (same sha256) have
similarity exactly 1.0 by definition (float32 rounding would otherwise give 0.99999994).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from functools import reduce

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from ..tasks import balanced_partitions

log = logging.getLogger(__name__)
RANKED_SCHEMA = T.StructType([
    T.StructField("product_id", T.LongType()),
    T.StructField("rank", T.IntegerType()),
    T.StructField("neighbour_id", T.LongType()),
    T.StructField("score", T.FloatType()),
])
BLOCK_SCHEMA = T.StructType([
    T.StructField("block", T.LongType()),
    T.StructField("ids", T.BinaryType()),  # int64[n]
    T.StructField("vectors", T.BinaryType()),  # float32[n, d], L2-normalised
    T.StructField("images", T.BinaryType()),  # int64[n]: hash of the image sha256
    T.StructField("groups", T.BinaryType()),  # int64[n]: candidates must share it
])
BLOCK_ARROW_SCHEMA = to_arrow_schema(BLOCK_SCHEMA)


# --- pure numpy -----------------------------------------------------------------------------

def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (similarity 0 to everything)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


# A candidate is scored again, pair by pair, when its kernel score lies within this of a
# row's k-th best: far above float32 rounding (about 1e-6 for unit vectors), far below the
# gaps that decide a ranking.
RESCORE_MARGIN = 1e-4
# Candidates FAISS returns per query beyond k: room for the query itself, identical images and
# near-ties; a row that needs more is searched again deeper.
SEARCH_SLACK = 11


def block_top_k(query_ids: np.ndarray, queries: np.ndarray, query_images: np.ndarray,
                query_groups: np.ndarray, candidate_ids: np.ndarray, candidates: np.ndarray,
                candidate_images: np.ndarray, candidate_groups: np.ndarray, k: int,
                exclude_same_image: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query row's k best candidates: (query_id, neighbour_id, score) arrays, by score
    descending then neighbour id ascending. Self, other groups and (optionally) identical
    images are never candidates.

    FAISS's exact inner-product search (`faiss.knn`: BLAS products, a heap per query) only
    shortlists: its float32 rounding depends on the matrices' shapes, so the same pair can
    score differently in two blocks, and identical vectors can come out 1 ulp apart, which
    would break ties by accident rather than by id. The shortlist's scores are computed again
    one pair at a time, the same way in every block."""
    if len(queries) == 0 or len(candidates) == 0 or k == 0:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    groups = np.unique(query_groups)
    if len(groups) > 1 or not np.all(candidate_groups == groups[0]):
        parts = []
        for group in groups:
            q, c = query_groups == group, candidate_groups == group
            parts.append(block_top_k(query_ids[q], queries[q], query_images[q], query_groups[q],
                                     candidate_ids[c], candidates[c], candidate_images[c],
                                     candidate_groups[c], k, exclude_same_image))
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
    rows, cols = shortlist(query_ids, queries, query_images, candidate_ids, candidates,
                           candidate_images, k, exclude_same_image)
    exact = pair_scores(queries, candidates, rows, cols)
    exact[query_images[rows] == candidate_images[cols]] = 1.0
    return best_per_row(query_ids[rows], candidate_ids[cols], exact, k)


def shortlist(query_ids: np.ndarray, queries: np.ndarray, query_images: np.ndarray,
              candidate_ids: np.ndarray, candidates: np.ndarray, candidate_images: np.ndarray,
              k: int, exclude_same_image: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every allowed candidate whose score is within RESCORE_MARGIN of its
    row's k-th best allowed one (an identical image scoring 1.0). A row is settled when FAISS's
    last returned score is below that threshold (nothing unreturned can reach it) or every
    candidate was returned; the others are searched again four times as deep."""
    import faiss

    rows_out, cols_out = [], []
    todo = np.arange(len(queries))
    depth = min(len(candidates), k + SEARCH_SLACK)
    while len(todo):
        raw, found = faiss.knn(queries[todo], candidates, depth, faiss.METRIC_INNER_PRODUCT)
        found = np.maximum(found, 0)  # -1 only past the end, where depth == len(candidates)
        same = query_images[todo, None] == candidate_images[found]
        scores = np.where(same, np.float32(1.0), raw)
        allowed = candidate_ids[found] != query_ids[todo, None]
        if exclude_same_image:
            allowed &= ~same
        scores[~allowed] = -np.inf
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1] \
            if depth >= k else np.full(len(todo), -np.inf, dtype=np.float32)
        threshold = kth - RESCORE_MARGIN
        settled = (depth == len(candidates)) | (raw[:, -1] < threshold)
        r, c = np.nonzero(settled[:, None] & (scores >= threshold[:, None]) & allowed)
        rows_out.append(todo[r])
        cols_out.append(found[r, c])
        todo = todo[~settled]
        depth = min(len(candidates), depth * 4)
    return np.concatenate(rows_out), np.concatenate(cols_out)


def pair_scores(queries: np.ndarray, candidates: np.ndarray, rows: np.ndarray,
                cols: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float32 dot products of the pairs (queries[rows[i]], candidates[cols[i]]), each summed
    in float64 the same way wherever it is computed."""
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        r, c = rows[start:start + chunk], cols[start:start + chunk]
        out[start:start + chunk] = np.sum(queries[r] * candidates[c], axis=1, dtype=np.float64)
    return out


def best_per_row(query_ids: np.ndarray, candidate_ids: np.ndarray, scores: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best (query_id, neighbour_id, score) of each query: by score, then smaller id."""
    order = np.lexsort((candidate_ids, -scores, query_ids))
    q, c, s = query_ids[order].astype(np.int64), candidate_ids[order].astype(np.int64), scores[order]
    first = np.searchsorted(q, q, side="left")  # q is sorted: where each query's run starts
    keep = np.arange(len(q)) - first < k
    return q[keep], c[keep], s[keep]


def ranked(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs in result order with rank 1..k per product."""
    pairs = pairs.sort_values(["product_id", "score", "neighbour_id"],
                              ascending=[True, False, True], kind="stable")
    pairs["rank"] = pairs.groupby("product_id").cumcount() + 1
    return pairs.reset_index(drop=True)[["product_id", "rank", "neighbour_id", "score"]]


# --- Spark ----------------------------------------------------------------------------------

def blocks_of(features: DataFrame, block_rows: int, group_columns: list[str],
              n: int | None = None) -> DataFrame:
    """One row per block: ids, normalised vectors, image hashes and group keys as raw arrays,
    one block a partition. `features` has product_id, embedding, sha256 and the group
    columns. Blocks hold at most `block_rows` products, their number a multiple of the
    cores (no core idles at the end of a pass). Which product lands in which block does not
    matter (any partition is exact), so rows are packed where they are (partitions only
    coalesced) and the packed blocks shuffled, not the vectors as arrays: half the time on
    the real catalogue. Packed from Arrow directly: pandas would make one Python object a
    vector. `n`: the rows of `features` where the caller has counted them already."""
    n = features.count() if n is None else n
    n_blocks = balanced_partitions(n, block_rows,
                                   features.sparkSession.sparkContext.defaultParallelism)
    size = -(-n // n_blocks)
    packed = block_columns(features, group_columns).coalesce(n_blocks).mapInArrow(
        lambda batches: pack_partition(batches, size, block_rows), BLOCK_SCHEMA)
    return packed.repartition(n_blocks)


def block_columns(features: DataFrame, group_columns: list[str]) -> DataFrame:
    """product_id, embedding, image (hash of the sha256) and group (hash of the group
    columns; 0 without) of every row of `features`."""
    group = (F.xxhash64(*[F.coalesce(F.col(c).cast("string"), F.lit("\0")) for c in group_columns])
             if group_columns else F.lit(0).cast("long"))
    return features.select("product_id", "embedding", F.xxhash64("sha256").alias("image"),
                           group.alias("group"))


def pack_partition(batches, size: int, block_rows: int):
    """A partition's rows (Arrow record batches of `block_columns`) -> BLOCK_SCHEMA rows of
    about `size` products each (never more than `block_rows`: a partition a little larger
    than a multiple of `size` makes its blocks a little larger, not one more small block),
    sorted by product id; block ids unique across partitions."""
    import pyarrow as pa
    from pyspark import TaskContext

    batches = list(batches)
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or not table.num_rows:
        return
    ids, vectors, images, groups = block_arrays(table)
    first_block = TaskContext.get().partitionId() << 32
    pieces = max(round(len(ids) / size), -(-len(ids) // block_rows), 1)
    for i, rows in enumerate(np.array_split(np.arange(len(ids)), pieces)):
        yield pa.RecordBatch.from_pydict({
            "block": pa.array([first_block + i], pa.int64()),
            "ids": [ids[rows].tobytes()],
            "vectors": [vectors[rows].tobytes()],
            "images": [images[rows].tobytes()],
            "groups": [groups[rows].tobytes()]}, schema=BLOCK_ARROW_SCHEMA)


def block_arrays(table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An Arrow table of `block_columns` -> (ids, L2-normalised float32 vectors, image hashes,
    group hashes), sorted by product id. From Arrow directly: pandas would make one Python
    object a vector."""
    import pyarrow.compute as pc

    table = table.take(pc.sort_indices(table, [("product_id", "ascending")]))
    embeddings = table.column("embedding").combine_chunks()
    lengths = pc.list_value_length(embeddings).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) > 1:
        raise ValueError(f"embeddings of different lengths in one table: {sorted(set(lengths))}")
    flat = pc.list_flatten(embeddings).to_numpy(zero_copy_only=False)
    vectors = l2_normalise(flat.astype(np.float32, copy=False).reshape(table.num_rows, -1))
    ids, images, groups = (table.column(name).to_numpy().astype(np.int64)
                           for name in ("product_id", "image", "group"))
    return ids, vectors, images, groups


def unpack(row) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids = np.frombuffer(row["ids"], dtype=np.int64)
    vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(ids), -1)
    return (ids, vectors, np.frombuffer(row["images"], dtype=np.int64),
            np.frombuffer(row["groups"], dtype=np.int64))


def chunked_blocks(sizes: dict[int, int], max_bytes: int) -> list[list[int]]:
    """Candidate blocks (id -> bytes of vectors) in consecutive chunks of at most `max_bytes`
    each (a block larger than that is a chunk of its own)."""
    chunks: list[list[int]] = []
    total = max_bytes + 1
    for block, size in sorted(sizes.items()):
        if total + size > max_bytes:
            chunks.append([])
            total = 0
        chunks[-1].append(block)
        total += size
    return chunks


def search_chunk(queries: DataFrame, chunk, k: int, exclude_same_image: bool) -> DataFrame:
    """Each query block's top-k among one broadcast chunk of candidates, one task a block:
    (product_id, rank, neighbour_id, score)."""

    def scan(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for _, row in batch.iterrows():
                q, n, s = block_top_k(*unpack(row), *chunk.value, k, exclude_same_image)
                found = pd.DataFrame({"product_id": q, "neighbour_id": n, "score": s})
                yield ranked(found)

    return queries.mapInPandas(scan, RANKED_SCHEMA)


def merge_top_k(pairs: DataFrame, k: int) -> DataFrame:
    """Partial lists -> each product's k best: rank 1..k by score, then smaller id."""
    order = Window.partitionBy("product_id").orderBy(F.desc("score"), F.asc("neighbour_id"))
    return (pairs.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)
            .select("product_id", "rank", "neighbour_id", "score"))


def nearest_neighbours(features: DataFrame, k: int, block_rows: int,
                       broadcast_max_bytes: int, group_columns: list[str] | None = None,
                       exclude_same_image: bool = False) -> tuple[DataFrame, str]:
    """(product_id, rank, neighbour_id, score): every product's top-k among `features`
    (product_id, embedding, sha256 and the group columns), computed and cached, and how it
    ran. When all the vectors fit in one broadcast chunk (`broadcast_max_bytes`) they go to
    the driver and back out as one broadcast, each task searching a range of them
    (`top_k_of_broadcast`): no block is packed or shuffled in Spark. Otherwise they are
    packed into blocks (`blocks_of`), broadcast chunk by chunk (`top_k_of_blocks`)."""
    group_columns = group_columns or []
    n = features.count()
    if not n:
        return features.sparkSession.createDataFrame([], RANKED_SCHEMA), "no products"
    dim = features.select(F.size("embedding")).first()[0]
    if n * dim * 4 <= broadcast_max_bytes:
        return top_k_of_broadcast(features, n, k, block_rows, group_columns, exclude_same_image)
    started = time.perf_counter()
    blocks = blocks_of(features, block_rows, group_columns, n).persist()
    log.info("neighbours: %d blocks packed in %.1f s", blocks.count(), time.perf_counter() - started)
    try:
        return top_k_of_blocks(blocks, blocks, k, broadcast_max_bytes, exclude_same_image)
    finally:
        blocks.unpersist()


def top_k_of_broadcast(features: DataFrame, n: int, k: int, block_rows: int,
                       group_columns: list[str], exclude_same_image: bool
                       ) -> tuple[DataFrame, str]:
    """Every product's top-k among all `n` of `features`, which fit in one broadcast: the
    driver collects them (Arrow), normalises and broadcasts them once; task i takes the
    i-th of equal ranges of them as its queries. Ranges, unlike packed blocks, are equal
    whatever the input's partitions, so every core works to the end of the pass."""
    spark = features.sparkSession
    started = time.perf_counter()
    arrays = block_arrays(block_columns(features, group_columns).toArrow())
    broadcast = spark.sparkContext.broadcast(arrays)
    n_blocks = balanced_partitions(n, block_rows, spark.sparkContext.defaultParallelism)
    bounds = np.linspace(0, n, n_blocks + 1).astype(np.int64)
    collected = time.perf_counter()

    def scan(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ids, vectors, images, groups = broadcast.value
        for batch in batches:
            for i in batch["id"]:
                rows = slice(bounds[i], bounds[i + 1])
                q, found, scores = block_top_k(ids[rows], vectors[rows], images[rows],
                                               groups[rows], ids, vectors, images, groups, k,
                                               exclude_same_image)
                yield ranked(pd.DataFrame({"product_id": q, "neighbour_id": found,
                                           "score": scores}))

    ranges = spark.range(0, n_blocks, numPartitions=n_blocks)
    result = ranges.mapInPandas(scan, RANKED_SCHEMA).localCheckpoint()
    broadcast.unpersist()
    log.info("neighbours: %d vectors collected and broadcast in %.1f s, %d ranges searched in "
             "%.1f s", n, collected - started, n_blocks, time.perf_counter() - collected)
    size = arrays[1].nbytes
    return result, (f"{n_blocks} query blocks x 1 broadcast candidate chunk(s) of "
                    f"<= {size / 2**20:.0f} MiB")


def top_k_of_blocks(queries: DataFrame, candidates: DataFrame, k: int,
                    broadcast_max_bytes: int, exclude_same_image: bool) -> tuple[DataFrame, str]:
    """The top-k among the `candidates` blocks of every product of the `queries` blocks
    (`blocks_of`), computed and cached, and how it ran. The candidates are broadcast in
    chunks of at most `broadcast_max_bytes` (at least one block), one pass a chunk in which
    every query block is a task: a Python worker holds one chunk and one query block at a
    time, and the driver one chunk. Several passes' lists are merged per product. Each pass's
    lists are checkpointed (lineage cut): with a cached DataFrame per pass, later queries over
    the result planned 3x slower."""
    spark = queries.sparkSession
    sizes = {r["block"]: r["bytes"] for r in
             candidates.select("block", F.length("vectors").alias("bytes")).collect()}
    chunks = chunked_blocks(sizes, broadcast_max_bytes)
    n_queries = len(sizes) if queries is candidates else queries.count()
    # One block per Arrow batch: the rows are large.
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "1")
    passes = []
    try:
        for i, chunk in enumerate(chunks):
            started = time.perf_counter()
            blocks = [unpack(r) for r in
                      candidates.where(F.col("block").isin(chunk)).select(*BLOCK_SCHEMA.names)
                      .toArrow().to_pylist()]
            broadcast = spark.sparkContext.broadcast(
                tuple(np.concatenate([b[i] for b in blocks]) for i in range(4)))
            del blocks
            collected = time.perf_counter()
            found = search_chunk(queries, broadcast, k, exclude_same_image).localCheckpoint()
            broadcast.unpersist()
            log.info("neighbours: pass %d of %d, %d candidate blocks: collected and broadcast "
                     "in %.1f s, searched in %.1f s", i + 1, len(chunks), len(chunk),
                     collected - started, time.perf_counter() - collected)
            passes.append(found)
        if len(passes) == 1:
            result = passes[0]
        else:
            result = merge_top_k(reduce(DataFrame.unionByName, passes), k).localCheckpoint()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    largest = max(sum(sizes[b] for b in chunk) for chunk in chunks) if chunks else 0
    path = (f"{n_queries} query blocks x {len(chunks)} broadcast candidate chunk(s) of "
            f"<= {largest / 2**20:.0f} MiB")
    return result, path


# --- keeping a table exact as products come and go -------------------------------------------

def lists_to_recompute(old: DataFrame, changes: DataFrame) -> DataFrame:
    """product_id of every unchanged product whose current list names a deleted or changed
    product: such a list cannot be patched, it is computed again against everything."""
    gone = changes.where(F.col("change") != "new").select(F.col("product_id").alias("neighbour_id"))
    return (old.join(gone, "neighbour_id", "left_semi").select("product_id").distinct()
            .join(changes.select("product_id"), "product_id", "left_anti"))


def patched_lists(old: DataFrame, challengers: DataFrame, k: int) -> DataFrame:
    """Each product's k best of its current list and `challengers` (its top-k among the new
    and changed products), for products whose current list holds only unchanged products:
    that list is their top-k among the unchanged ones, so the merge is their exact top-k."""
    both = old.select("product_id", "neighbour_id", "score").unionByName(
        challengers.select("product_id", "neighbour_id", "score"))
    return merge_top_k(both.join(challengers.select("product_id").distinct(), "product_id",
                                 "left_semi"), k)


def changed_lists(new: DataFrame, old: DataFrame) -> DataFrame:
    """The rows of `new` (product_id, rank, neighbour_id, score) of products whose list is
    not the same as in `old`."""
    columns = ["product_id", "rank", "neighbour_id", "score"]
    different = (new.select(*columns).exceptAll(old.select(*columns)).select("product_id")
                 .unionByName(old.join(new.select("product_id").distinct(), "product_id",
                                       "left_semi").select(*columns)
                              .exceptAll(new.select(*columns)).select("product_id"))
                 .distinct())
    return new.join(different, "product_id", "left_semi")
