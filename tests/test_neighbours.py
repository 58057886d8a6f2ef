"""Blocked top-k neighbours: exact against an independent float64 reference (ties to the
smaller id, identical images at 1.0, never oneself), on both the blocked and the broadcast path."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from lookbook.similarity.knn import block_top_k, l2_normalise, nearest_neighbours, top_k_rows

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


def test_top_k_rows_breaks_ties_by_smaller_id():
    scores = np.array([[0.5, 0.9, 0.9, 0.1, 0.9]], dtype="float32")
    q, n, s = top_k_rows(np.array([7]), np.array([50, 40, 30, 20, 10]), scores, 2)
    assert n.tolist() == [10, 30] and s.tolist() == pytest.approx([0.9, 0.9])


def test_block_top_k_excludes_self_and_scores_identical_images_one():
    vectors = l2_normalise(np.array([[1, 0], [1, 0.001], [0, 1]], dtype="float32"))
    ids, images, groups = np.array([1, 2, 3]), np.array([5, 5, 6]), np.zeros(3)
    q, n, s = block_top_k(ids, vectors, images, groups, ids, vectors, images, groups, 2)
    got = pd.DataFrame({"q": q, "n": n, "s": s})
    assert 1 not in got[got.q == 1].n.tolist()
    assert got[(got.q == 1) & (got.n == 2)].s.item() == 1.0  # same image bytes: exactly 1
    q, n, s = block_top_k(ids, vectors, images, groups, ids, vectors, images, groups, 2,
                          exclude_same_image=True)
    assert 2 not in n[q == 1].tolist()


@pytest.mark.parametrize("block_rows, broadcast_max_bytes", [(64, 0), (1000, 0), (64, 10**9)])
def test_spark_top_k_is_exact(spark, block_rows, broadcast_max_bytes):
    ids, vectors, shas, genders = catalogue()
    result, path = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, block_rows,
                                      broadcast_max_bytes)
    assert path.startswith("broadcast" if broadcast_max_bytes else "blocked")
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


def test_candidates_restricted_to_the_same_group(spark):
    ids, vectors, shas, genders = catalogue(n=120)
    result, _ = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, 50, 0,
                                   group_columns=["gender"])
    got = result.toPandas()
    assert len(got) == 5 * len(ids)
    assert_exact_top_k(got, ids, vectors, 5, images=shas, groups=genders)


def test_fewer_products_than_k(spark):
    ids, vectors, shas, genders = catalogue(n=4)
    got = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, 2, 0)[0].toPandas()
    assert got.groupby("product_id").size().tolist() == [3, 3, 3, 3]
    assert_exact_top_k(got, ids, vectors, 5, images=shas)
