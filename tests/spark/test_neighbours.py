"""Blocked top-k neighbours: exact against an independent float64 reference (ties to the
smaller id, identical images at 1.0, never oneself), with the candidates broadcast whole or in
chunks of one block."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from lookbook.similarity.knn import (
    best_per_row,
    block_top_k,
    chunked_blocks,
    l2_normalise,
    nearest_neighbours,
)
from lookbook.tasks import balanced_partitions

from reference import assert_exact_top_k

SCHEMA = T.StructType([
    T.StructField("product_id", T.LongType()),
    T.StructField("embedding", T.ArrayType(T.FloatType())),
    T.StructField("sha256", T.StringType()),
    T.StructField("gender", T.StringType()),
])


def catalogue(n=300, d=16, seed=0):
    """Random vectors with exact ties: a few duplicated images and a few scaled copies."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d)).astype("float32")
    ids = rng.choice(np.arange(1, 10 * n), n, replace=False).astype("int64")
    shas = [f"sha{i}" for i in range(n)]
    if n > 21:
        for a, b in ((0, 1), (0, 2), (10, 11)):  # identical image bytes
            vectors[b], shas[b] = vectors[a], shas[a]
        vectors[21] = 3 * vectors[20]  # same direction, other image: cosine 1 up to rounding
    genders = rng.choice(["Men", "Women"], n)
    return ids, vectors, shas, genders


def frame(spark, ids, vectors, shas, genders):
    return spark.createDataFrame([(int(i), v.tolist(), str(s), str(g))
                                  for i, v, s, g in zip(ids, vectors, shas, genders)], SCHEMA)


def test_best_per_row_breaks_ties_by_smaller_id():
    queries = np.array([7, 7, 7, 7, 7, 3, 3])
    candidates = np.array([50, 40, 30, 20, 10, 40, 10])
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.9, 0.2, 0.2], dtype="float32")
    q, n, s = best_per_row(queries, candidates, scores, 2)
    assert q.tolist() == [3, 3, 7, 7] and n.tolist() == [10, 40, 10, 30]


def test_candidate_blocks_are_chunked_under_the_byte_limit():
    sizes = {0: 40, 1: 30, 2: 50, 3: 10, 4: 200}
    assert chunked_blocks(sizes, 100) == [[0, 1], [2, 3], [4]]
    assert chunked_blocks(sizes, 0) == [[0], [1], [2], [3], [4]]
    assert chunked_blocks(sizes, 10**9) == [[0, 1, 2, 3, 4]]
    assert chunked_blocks({}, 100) == []


def test_partitions_are_as_many_as_needed_rounded_up_to_the_cores():
    assert balanced_partitions(44441, 4096, 2) == 12
    assert balanced_partitions(6000, 2048, 2) == 4  # not 3: one core would idle a third
    assert balanced_partitions(300, 64, 2) == 6 and balanced_partitions(256, 64, 4) == 4
    assert balanced_partitions(0, 64, 2) == 2 and balanced_partitions(10, 64, 1) == 1


def test_a_pair_scores_the_same_in_blocks_of_any_shape():
    """A matrix product's float32 rounding depends on the shapes (here, on this machine, the
    same pair came out as 3 different values over these 9 block shapes); a neighbour list
    merged from blocks would then break ties by accident. block_top_k reports one value."""
    rng = np.random.default_rng(2)
    queries = l2_normalise(rng.normal(size=(17, 1024)))
    twin = l2_normalise(queries[:1] + 1.5 * l2_normalise(rng.normal(size=(1, 1024))))
    others = l2_normalise(rng.normal(size=(80, 1024)))
    reported = set()
    for n in (1, 3, 17):
        for block in (np.vstack([twin, others[:4]]), np.vstack([others[:32], twin]),
                      np.vstack([others, twin])):
            ids, zeros = np.arange(1000, 1000 + len(block)), np.zeros(n)
            q, found, score = block_top_k(np.arange(n), queries[:n], zeros - 1, zeros, ids, block,
                                          np.arange(len(block)), np.zeros(len(block)), 1)
            assert found[0] == ids[np.flatnonzero((block == twin).all(axis=1))[0]]
            reported.add(float(score[0]))
    assert len(reported) == 1


@pytest.mark.parametrize("exclude_same_image", [False, True])
def test_rows_with_more_ties_than_the_first_search_are_searched_deeper(exclude_same_image):
    """30 products share one image and 25 others nearly one direction (cosines within
    RESCORE_MARGIN of each other): their lists need more than the first FAISS search returns
    (k + SEARCH_SLACK), so they are searched again."""
    rng = np.random.default_rng(5)
    n, d = 400, 24
    vectors = rng.normal(size=(n, d)).astype("float32")
    shas = np.array([f"sha{i}" for i in range(n)], dtype=object)
    vectors[1:30], shas[1:30] = vectors[0], shas[0]
    vectors[100:125] = vectors[100] + rng.normal(scale=1e-3, size=(25, d)).astype("float32")
    ids = rng.choice(np.arange(1, 10 * n), n, replace=False).astype("int64")
    images = np.array([hash(s) for s in shas], dtype="int64")
    unit = l2_normalise(vectors)
    q, found, score = block_top_k(ids, unit, images, np.zeros(n), ids, unit, images,
                                  np.zeros(n), 5, exclude_same_image)
    got = pd.DataFrame({"product_id": q, "neighbour_id": found, "score": score})
    got["rank"] = got.groupby("product_id").cumcount() + 1
    assert len(got) == 5 * n
    assert_exact_top_k(got, ids, vectors, 5, images=list(shas),
                       exclude_same_image=exclude_same_image)


@pytest.mark.parametrize("block_rows, broadcast_max_bytes", [(64, 0), (1000, 0), (64, 10**9)])
def test_spark_top_k_is_exact(spark, block_rows, broadcast_max_bytes):
    ids, vectors, shas, genders = catalogue()
    result, path = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, block_rows,
                                      broadcast_max_bytes)
    cores = spark.sparkContext.defaultParallelism
    chunks = 1 if broadcast_max_bytes else balanced_partitions(len(ids), block_rows, cores)
    assert f"x {chunks} broadcast candidate chunk(s)" in path
    got = result.toPandas()
    assert len(got) == 5 * len(ids)
    assert_exact_top_k(got, ids, vectors, 5, images=shas)
    # Identical images are each other's first neighbours, at exactly 1.0.
    first = got[got["rank"] == 1].set_index("product_id")
    assert first.loc[ids[0], "score"] == 1.0 and first.loc[ids[0], "neighbour_id"] == min(ids[1], ids[2])
    assert first.loc[ids[10], "neighbour_id"] == ids[11]


def test_the_reference_catches_wrong_answers(spark):
    """The reference can fail: a worse neighbour, a wrong tie order, a wrong score, self."""
    ids, vectors, shas, genders = catalogue(n=60)
    right = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 3, 64, 0)[0].toPandas()
    assert_exact_top_k(right, ids, vectors, 3, images=shas)
    query = right[right["product_id"] == ids[30]].index
    others = [i for i in ids if i not in set(right.loc[query, "neighbour_id"]) | {ids[30]}]
    wrongs = []
    worse = right.copy()
    worse.loc[query[-1], "neighbour_id"] = others[0]
    wrongs.append(worse)
    scored = right.copy()
    scored["score"] = scored["score"].astype("float64")
    scored.loc[query[0], "score"] += 0.01
    wrongs.append(scored)
    itself = right.copy()
    itself.loc[query[0], "neighbour_id"] = ids[30]
    wrongs.append(itself)
    tie = right.copy()  # product 0's neighbours 1 and 2 are identical images: both at 1.0
    pair = tie[(tie["product_id"] == ids[0]) & (tie["rank"] <= 2)].index
    tie.loc[pair, "neighbour_id"] = tie.loc[pair, "neighbour_id"].to_numpy()[::-1]
    wrongs.append(tie)
    for wrong in wrongs:
        with pytest.raises(AssertionError):
            assert_exact_top_k(wrong, ids, vectors, 3, images=shas)


@pytest.mark.parametrize("broadcast_max_bytes", [0, 10**9])  # packed blocks; ranges
def test_candidates_restricted_to_the_same_group(spark, broadcast_max_bytes):
    ids, vectors, shas, genders = catalogue(n=120)
    result, _ = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, 50,
                                   broadcast_max_bytes, group_columns=["gender"])
    got = result.toPandas()
    assert len(got) == 5 * len(ids)
    assert_exact_top_k(got, ids, vectors, 5, images=shas, groups=genders)


@pytest.mark.parametrize("broadcast_max_bytes", [0, 10**9])
def test_fewer_products_than_k(spark, broadcast_max_bytes):
    ids, vectors, shas, genders = catalogue(n=4)
    got = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, 2,
                             broadcast_max_bytes)[0].toPandas()
    assert got.groupby("product_id").size().tolist() == [3, 3, 3, 3]
    assert_exact_top_k(got, ids, vectors, 5, images=shas)


def test_no_products_no_neighbours(spark):
    ids, vectors, shas, genders = catalogue(n=4)
    empty = frame(spark, ids, vectors, shas, genders).limit(0)
    result, path = nearest_neighbours(empty, 5, 64, 10**9)
    assert result.count() == 0 and path == "no products"


def test_packed_blocks_are_as_many_as_planned_from_uneven_partitions(spark):
    """44,441 rows in 4 partitions of 11,110 or 11,111, and 3,704 a block: 12 blocks, not
    13 (one more small block would be a wave of its own on 2 cores), none over block_rows."""
    from pyspark.sql import functions as F

    from lookbook.similarity.knn import blocks_of

    rows = (spark.range(44441).repartition(4)
            .select(F.col("id").alias("product_id"),
                    F.array(F.lit(1.0), (F.col("id") % 7).cast("double")).cast("array<float>")
                    .alias("embedding"), F.col("id").cast("string").alias("sha256")))
    sizes = sorted(r["count"] for r in
                   rows.groupBy(F.spark_partition_id()).count().collect())
    assert len(sizes) == 4 and sizes[0] != sizes[-1]
    blocks = blocks_of(rows, 4096, []).select(F.length("ids").alias("bytes")).collect()
    cores = spark.sparkContext.defaultParallelism
    assert len(blocks) == balanced_partitions(44441, 4096, cores)
    assert max(b["bytes"] for b in blocks) <= 4096 * 8
    assert sum(b["bytes"] for b in blocks) == 44441 * 8
