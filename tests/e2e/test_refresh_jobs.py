"""The nightly refresh job as a user runs it, on a copy of the shared pipeline run's warehouse
(neighbours within a gender: a relabelled product changes group). After products are added,
changed (image or labels) and deleted in the catalogue folder, a refresh killed mid-way leaves
tables that read as before; the next completes it; every table then equals what a full
recomputation gives, only the changed products were decoded, featurized and predicted, and a
refresh with no change commits nothing. (The same on a standalone cluster: test_cluster.py.)"""
import shutil
from pathlib import Path

import numpy as np
from deltalake import DeltaTable

from lookbook.io.catalog import TABLES, Catalog
from lookbook.models.store import find_model
from lookbook.pipelines.catalogue_steps import ingest
from lookbook.pipelines.feature_steps import featurize
from lookbook.pipelines.neighbour_steps import duplicates, neighbours

from helpers import (
    PIPELINE_SETTINGS,
    change_catalogue,
    config_for,
    copy_tables,
    finish,
    full_recomputation,
    job_runs,
    neighbours_table,
    product_ids,
    settings_for,
    start,
    step_metrics,
)
from reference import assert_exact_top_k

STEPS = ["ingest", "augment", "featurize", "predict", "neighbours", "duplicates"]


def versions(warehouse: Path) -> dict[str, int]:
    return {name: DeltaTable(str(warehouse / name)).version() for name in TABLES
            if (warehouse / name / "_delta_log").exists()}


def test_a_killed_refresh_is_completed_by_the_next_as_a_full_recomputation(spark, pipeline_run,
                                                                           tmp_path):
    _, run = pipeline_run
    catalogue, warehouse = tmp_path / "catalogue", tmp_path / "warehouse"
    shutil.copytree(run.data_dir, catalogue)
    copy_tables(Path(run.warehouse), warehouse)
    args = settings_for(catalogue, warehouse, run.featurize.weights_cache, *PIPELINE_SETTINGS)
    cfg = config_for(catalogue, warehouse, run.featurize.weights_cache, *PIPELINE_SETTINGS)
    assert cfg.neighbours.same == ["gender"]
    model = find_model(cfg.models_dir).run_id  # the pipeline's
    tables = Catalog(spark, cfg.warehouse)
    predicted = tables.read("predictions").toPandas().set_index("product_id")
    lists_before = tables.read("neighbours").select("product_id").distinct().count()
    changed = change_catalogue(catalogue, product_ids(spark, cfg.warehouse))

    # Killed (SIGKILL) right after predictions is committed, before prediction_rejects:
    # products and features are refreshed, predictions still read as before.
    code, out = finish(start("refresh", *args,
                             env={"LOOKBOOK_CRASH_AT": "tables.committed:predictions"}))
    assert code != 0, out[-3000:]
    tables = Catalog(spark, cfg.warehouse)
    assert set(changed["new"]) <= set(product_ids(spark, cfg.warehouse))
    after_kill = tables.read("predictions").toPandas().set_index("product_id")
    assert after_kill.sort_index().equals(predicted.sort_index())

    code, out = finish(start("refresh", *args))
    assert code == 0, out[-3000:]
    assert "refresh summary" in out
    for i, step in enumerate(STEPS, 1):
        assert f"[{i}/{len(STEPS)}] {step} done" in out

    # What each run computed (its steps' MLflow records): the killed one ingested and
    # featurized the changes, and only them; the next took the rest from there.
    killed, completed = job_runs(warehouse, "refresh")
    assert killed.info.status == "RUNNING" and completed.info.status == "FINISHED"
    first, second = step_metrics(warehouse, killed.info.run_id), \
        step_metrics(warehouse, completed.info.run_id)
    assert {k: first["ingest"].get(f"changes.{k}") for k in changed} == \
        {k: len(v) for k, v in changed.items()}
    assert first["featurize"]["computed"] == len(changed["new"]) + len(changed["image"])
    assert first["featurize"]["stale"] == len(changed["image"]) + len(changed["deleted"])
    assert second["featurize"]["computed"] == 0
    assert second["neighbours"]["incremental"] == 1
    # Not every list was recomputed: a few changes, a few lists.
    assert 0 < second["neighbours"]["changes.lists_changed"] < lists_before / 2

    tables = Catalog(spark, cfg.warehouse)
    products = set(product_ids(spark, cfg.warehouse))
    assert not set(changed["deleted"]) & products
    now = tables.read("predictions").toPandas().set_index("product_id")
    assert set(now.index) == products and (now["run_id"] == model).all()
    # Only new and changed images were predicted; the others' rows are the same.
    unchanged = sorted(products - set(changed["new"]) - set(changed["image"]))
    assert now.loc[unchanged].sort_index().equals(predicted.loc[unchanged].sort_index())

    # Neighbours and duplicates are what a full recomputation gives: every row, ties and
    # float scores included.
    got = neighbours_table(spark, cfg.warehouse)
    reference = full_recomputation(spark, cfg, tmp_path, neighbours, duplicates)
    assert got.equals(neighbours_table(spark, reference))
    features = (tables.read("features").join(tables.read("products").select(
        "product_id", "gender"), "product_id").toPandas().sort_values("product_id"))
    assert not set(changed["deleted"]) & set(features["product_id"])
    assert not set(changed["deleted"]) & (set(got["product_id"]) | set(got["neighbour_id"]))
    assert_exact_top_k(got, features["product_id"], np.stack(features["embedding"]),
                       cfg.neighbours.k, images=features["sha256"], groups=features["gender"])
    pairs = ["product_id", "other_id"]
    got_pairs = tables.read("duplicates").toPandas().sort_values(pairs).reset_index(drop=True)
    expected_pairs = (Catalog(spark, str(reference)).read("duplicates").toPandas()
                      .sort_values(pairs).reset_index(drop=True))
    assert got_pairs.equals(expected_pairs)

    # Nothing changed since: nothing is computed, nothing committed.
    at = versions(warehouse)
    results = {}
    for step in (ingest, featurize, neighbours, duplicates):
        results[step.__name__] = result = step(spark, cfg)
        assert "nothing committed" in result.summary, (step.__name__, result.summary)
    assert versions(warehouse) == at
    # Only new and changed images were decoded; the others were recognised by their sha256.
    # Image files that made no product (bad inputs) are decoded on every run.
    unproductive = results["ingest"].metrics["decoded"]
    assert unproductive < results["ingest"].metrics["products"] / 4
    assert first["ingest"]["decoded"] == len(changed["new"]) + len(changed["image"]) + unproductive
