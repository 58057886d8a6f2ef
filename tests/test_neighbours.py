"""Blocked top-k neighbours: the same result as brute force (ties to the smaller id, identical
images at 1.0, never oneself), on both the blocked and the broadcast path."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from lookbook.neighbours import (block_top_k, brute_force_top_k, l2_normalise,
                                 nearest_neighbours, top_k_rows)

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


def as_lists(df: pd.DataFrame) -> dict[int, list[int]]:
    return {pid: list(g.sort_values("rank")["neighbour_id"]) for pid, g in df.groupby("product_id")}


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
def test_spark_top_k_equals_brute_force(spark, block_rows, broadcast_max_bytes):
    ids, vectors, shas, genders = catalogue()
    result, path = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, block_rows,
                                      broadcast_max_bytes)
    assert path.startswith("broadcast" if broadcast_max_bytes else "blocked")
    got = result.toPandas()
    images = np.array([hash(s) for s in shas])
    expected = brute_force_top_k(ids, vectors, 5, images)
    assert len(got) == 5 * len(ids)
    assert (got["product_id"] != got["neighbour_id"]).all()
    assert as_lists(got) == as_lists(expected)
    merged = got.merge(expected, on=["product_id", "rank"])
    np.testing.assert_allclose(merged["score_x"], merged["score_y"], atol=1e-6)
    # Identical images are each other's first neighbours, at exactly 1.0.
    first = got[got["rank"] == 1].set_index("product_id")
    assert first.loc[ids[0], "score"] == 1.0 and first.loc[ids[0], "neighbour_id"] == min(ids[1], ids[2])
    assert first.loc[ids[10], "neighbour_id"] == ids[11]


def test_brute_force_reference_is_itself_exact():
    """The reference against a plain per-row sort of the full float64 matrix."""
    ids, vectors, _, _ = catalogue(n=80)
    expected = brute_force_top_k(ids, vectors, 3)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    full = unit.astype("float64") @ unit.T.astype("float64")
    for i, pid in enumerate(ids):
        order = sorted((j for j in range(len(ids)) if j != i), key=lambda j: (-full[i, j], ids[j]))
        assert as_lists(expected)[pid] == [ids[j] for j in order[:3]]


def test_candidates_restricted_to_the_same_group(spark):
    ids, vectors, shas, genders = catalogue(n=120)
    result, _ = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, 50, 0,
                                   group_columns=["gender"])
    got = result.toPandas()
    gender = dict(zip(ids, genders))
    assert all(gender[a] == gender[b] for a, b in zip(got["product_id"], got["neighbour_id"]))
    assert len(got) == 5 * len(ids)


def test_fewer_products_than_k(spark):
    ids, vectors, shas, genders = catalogue(n=4)
    got = nearest_neighbours(frame(spark, ids, vectors, shas, genders), 5, 2, 0)[0].toPandas()
    assert got.groupby("product_id").size().tolist() == [3, 3, 3, 3]
