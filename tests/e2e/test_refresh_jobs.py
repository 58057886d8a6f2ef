"""The nightly refresh job as a user runs it, on a copy of the shared pipeline run's warehouse:
killed mid-way, it leaves tables that read as before, and the next refresh completes it,
computing only what changed."""
import shutil
from pathlib import Path

from lookbook.io.catalog import Catalog
from lookbook.models.store import find_model
from lookbook.pipelines.neighbour_steps import neighbours

from helpers import (
    PIPELINE_SETTINGS,
    change_catalogue,
    config_for,
    copy_tables,
    finish,
    full_recomputation,
    neighbours_table,
    product_ids,
    settings_for,
    start,
)


def test_a_refresh_killed_midway_is_completed_by_the_next(spark, pipeline_run, tmp_path):
    _, run = pipeline_run
    catalogue, warehouse = tmp_path / "catalogue", tmp_path / "warehouse"
    shutil.copytree(run.data_dir, catalogue)
    copy_tables(Path(run.warehouse), warehouse)
    args = settings_for(catalogue, warehouse, run.featurize.weights_cache, *PIPELINE_SETTINGS)
    cfg = config_for(catalogue, warehouse, run.featurize.weights_cache, *PIPELINE_SETTINGS)
    model = find_model(cfg.models_dir).run_id  # the pipeline's
    tables = Catalog(spark, cfg.warehouse)
    predicted = tables.read("predictions").toPandas().set_index("product_id")
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
    steps = ["ingest", "augment", "featurize", "predict", "neighbours", "duplicates"]
    for i, step in enumerate(steps, 1):
        assert f"[{i}/{len(steps)}] {step} done" in out
    tables = Catalog(spark, cfg.warehouse)
    products = set(product_ids(spark, cfg.warehouse))
    now = tables.read("predictions").toPandas().set_index("product_id")
    assert set(now.index) == products and (now["run_id"] == model).all()
    # Only new and changed images were predicted; the others' rows are the same.
    unchanged = sorted(products - set(changed["new"]) - set(changed["image"]))
    assert now.loc[unchanged].sort_index().equals(predicted.loc[unchanged].sort_index())
    got = neighbours_table(spark, cfg.warehouse)
    reference = full_recomputation(spark, cfg, Path(tmp_path), neighbours)
    assert got.equals(neighbours_table(spark, reference))
