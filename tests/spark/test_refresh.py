"""The nightly refresh's parts on small frames: the incremental top-k update against a full
recomputation, and the steps the refresh job runs (tests/e2e/test_refresh_jobs.py: the job
itself, killed mid-way, against a full recomputation)."""

import numpy as np
import pytest

from reference import assert_exact_top_k


@pytest.mark.parametrize("broadcast_max_bytes, same", [(0, []), (1 << 30, ["gender"])],
                         ids=["one-block-chunks", "broadcast-same-gender"])
def test_updating_neighbours_is_exact_after_adds_changes_and_deletes(spark, broadcast_max_bytes,
                                                                     same):
    """The update against brute force on random vectors with many exact ties: a group of
    identical images that loses members, gains new ones and changed ones."""
    import pandas as pd

    from lookbook.similarity.incremental import update_neighbours
    from lookbook.similarity.knn import nearest_neighbours

    rng = np.random.default_rng(3)
    n, d, k = 300, 12, 5
    ids = list(range(10, 10 + 7 * n, 7))
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    vectors[:12] = vectors[0]  # twelve products with one image: ties at exactly 1.0
    before = pd.DataFrame({"product_id": ids, "embedding": list(vectors),
                           "sha256": ["dup" if i < 12 else f"s{i}" for i in range(n)],
                           "gender": rng.choice(["Men", "Women"], n)})
    after = before.drop(index=[0, 3, 50, 51, 52, 120, 200, 201]).copy()  # deleted
    for i in [4, 60, 61, 150]:  # changed: new images, two of them the tied one
        after.at[i, "embedding"] = rng.normal(size=d).astype(np.float32)
        after.at[i, "sha256"] = f"new{i}"
    for i in [70, 71]:
        after.at[i, "embedding"], after.at[i, "sha256"] = vectors[0], "dup"
    after.loc[[80, 81, 82], "gender"] = "Unisex"  # changed group
    added = pd.DataFrame({"product_id": [5, 100_000, 100_001, 100_002],
                          "embedding": [vectors[0], vectors[90], *rng.normal(size=(2, d)).astype(np.float32)],
                          "sha256": ["dup", "s90", "a1", "a2"], "gender": ["Men"] * 4})
    after = pd.concat([after, added], ignore_index=True)
    schema = "product_id long, embedding array<float>, sha256 string, gender string"
    # Two blocks of 150 (on 2 cores): with broadcast_max_bytes=0, two chunks whose lists merge.
    block_rows = 150

    def frame(df):
        return spark.createDataFrame(
            [(int(r.product_id), [float(x) for x in r.embedding], r.sha256, r.gender)
             for r in df.itertuples()], schema)

    old, _ = nearest_neighbours(frame(before), k, block_rows, broadcast_max_bytes, same)
    old = old.persist()  # as the step's, read from its table: not computed again at each use
    update = update_neighbours(old, frame(after), frame(before).drop("embedding"), k=k,
                               block_rows=block_rows, broadcast_max_bytes=broadcast_max_bytes, same=same)
    replaced = update.rows.select("product_id").unionByName(update.removed)
    table = old.join(replaced, "product_id", "left_anti").unionByName(update.rows)
    got = table.toPandas().sort_values(["product_id", "rank"]).reset_index(drop=True)
    full, _ = nearest_neighbours(frame(after), k, block_rows, broadcast_max_bytes, same)
    expected = full.toPandas().sort_values(["product_id", "rank"]).reset_index(drop=True)
    update.release()
    old.unpersist()
    assert got.equals(expected)
    assert_exact_top_k(got, after["product_id"], np.stack(after["embedding"]), k,
                       images=after["sha256"], groups=after["gender"] if same else None)
    assert update.counts["deleted"] == 8 and update.counts["new"] == 4
    assert update.counts["changed"] == 6 + (3 if same else 0)
    assert 0 < update.counts["lists_changed"] < len(after) / 2


def test_the_refresh_job_runs_the_incremental_steps_and_retrains_when_asked():
    from lookbook.cli import parse_job_args
    from lookbook.pipelines.runner import job_steps

    steps = ["ingest", "augment", "featurize", "predict", "neighbours", "duplicates"]
    assert job_steps("refresh", parse_job_args("refresh", [])) == steps
    retrain = parse_job_args("refresh", ["retrain=true"])
    assert retrain.refresh.retrain
    assert job_steps("refresh", retrain) == ["ingest", "augment", "featurize", "train",
                                             "evaluate", "predict", "neighbours", "duplicates"]
