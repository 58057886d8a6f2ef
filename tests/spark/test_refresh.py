"""The nightly refresh in-process: after products are added, changed (image or labels) and
deleted in the catalogue folder, every table equals what a full recomputation gives, only the
changed products are decoded and featurized, unchanged files are kept, and a refresh with no
change commits nothing (tests/e2e/test_refresh_jobs.py: the refresh job, killed mid-way)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from lookbook.io.catalog import TABLES, Catalog
from lookbook.pipelines.catalogue_steps import ingest
from lookbook.pipelines.feature_steps import featurize
from lookbook.pipelines.neighbour_steps import duplicates, neighbours

from helpers import change_catalogue, config_for, full_recomputation, neighbours_table, product_ids
from reference import assert_exact_top_k


def versions(warehouse: Path) -> dict[str, int]:
    return {name: DeltaTable(str(warehouse / name)).version() for name in TABLES
            if (warehouse / name / "_delta_log").exists()}


def test_refresh_equals_a_full_recomputation(spark, warehouse_copy, tmp_path):
    """With neighbours.same=[gender], so that a change of labels moves a product to another
    group (the job test below checks the default, any product a candidate)."""
    same = ["gender"]
    catalogue = tmp_path / "catalogue"
    shutil.copytree(warehouse_copy.data_dir, catalogue)
    cfg = config_for(catalogue, Path(warehouse_copy.warehouse),
                     Path(warehouse_copy.featurize.weights_cache),
                     f"neighbours.same=[{','.join(same)}]")
    neighbours(spark, cfg)
    duplicates(spark, cfg)
    before = neighbours_table(spark, cfg.warehouse)
    changed = change_catalogue(catalogue, product_ids(spark, cfg.warehouse))

    ingested = ingest(spark, cfg)
    assert {k: ingested.metrics.get(f"changes.{k}") for k in changed} == \
        {k: len(v) for k, v in changed.items()}
    featurized = featurize(spark, cfg)
    assert featurized.metrics["computed"] == len(changed["new"]) + len(changed["image"])
    assert featurized.metrics["stale"] == len(changed["image"]) + len(changed["deleted"])
    updated = neighbours(spark, cfg)
    assert updated.metrics["incremental"] == 1
    duplicates(spark, cfg)

    got = neighbours_table(spark, cfg.warehouse)
    reference = full_recomputation(spark, cfg, tmp_path, neighbours, duplicates)
    expected = neighbours_table(spark, reference)
    assert got.equals(expected)  # every row, ties and float scores included
    tables = Catalog(spark, cfg.warehouse)
    features = (tables.read("features").join(tables.read("products").select(
        "product_id", *(same or ["gender"])), "product_id").toPandas().sort_values("product_id"))
    assert_exact_top_k(got, features["product_id"], np.stack(features["embedding"]), cfg.neighbours.k,
                       images=features["sha256"], groups=features[same[0]] if same else None)
    assert not set(changed["deleted"]) & (set(got["product_id"]) | set(got["neighbour_id"]))
    # Not every list was recomputed: a few changes, a few lists.
    assert 0 < updated.metrics["changes.lists_changed"] < len(before["product_id"].unique()) / 2
    got_pairs = tables.read("duplicates").toPandas().sort_values(["product_id", "other_id"])
    expected_pairs = (Catalog(spark, str(reference)).read("duplicates").toPandas()
                      .sort_values(["product_id", "other_id"]))
    assert got_pairs.reset_index(drop=True).equals(expected_pairs.reset_index(drop=True))
    assert not set(changed["deleted"]) & set(tables.read("products").toPandas()["product_id"])
    assert not set(changed["deleted"]) & set(features["product_id"])

    # Nothing changed since: nothing is computed, nothing committed.
    at = versions(Path(cfg.warehouse))
    results = {}
    for step in (ingest, featurize, neighbours, duplicates):
        results[step.__name__] = result = step(spark, cfg)
        assert "nothing committed" in result.summary, (step.__name__, result.summary)
    assert versions(Path(cfg.warehouse)) == at
    # Only new and changed images were decoded; the others were recognised by their sha256.
    # Image files that made no product (bad inputs) are decoded on every run.
    unproductive = results["ingest"].metrics["decoded"]
    assert unproductive < results["ingest"].metrics["products"] / 4
    assert ingested.metrics["decoded"] == len(changed["new"]) + len(changed["image"]) + unproductive


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

    def frame(df):
        return spark.createDataFrame(
            [(int(r.product_id), [float(x) for x in r.embedding], r.sha256, r.gender)
             for r in df.itertuples()], schema)

    old, _ = nearest_neighbours(frame(before), k, 64, broadcast_max_bytes, same)
    update = update_neighbours(old, frame(after), frame(before).drop("embedding"), k=k,
                               block_rows=64, broadcast_max_bytes=broadcast_max_bytes, same=same)
    replaced = update.rows.select("product_id").unionByName(update.removed)
    table = old.join(replaced, "product_id", "left_anti").unionByName(update.rows)
    got = table.toPandas().sort_values(["product_id", "rank"]).reset_index(drop=True)
    full, _ = nearest_neighbours(frame(after), k, 64, broadcast_max_bytes, same)
    expected = full.toPandas().sort_values(["product_id", "rank"]).reset_index(drop=True)
    update.release()
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
