"""The nightly refresh: after products are added, changed (image or labels) and deleted in the
catalogue folder, every table equals what a full recomputation gives, only the changed
products are decoded, featurized and predicted, unchanged files are kept, a refresh with no
change commits nothing, and a refresh killed mid-way is completed by the next one."""
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable
from PIL import Image, ImageOps

from lookbook.io.catalog import TABLES, Catalog
from lookbook.pipelines.catalogue_steps import ingest
from lookbook.pipelines.feature_steps import featurize
from lookbook.pipelines.neighbour_steps import duplicates, neighbours

from conftest import DUPLICATE_ID, config_for
from reference import assert_exact_top_k

NEIGHBOUR_COLUMNS = ["product_id", "rank", "neighbour_id", "score"]


def change_catalogue(root: Path, products: list[int]) -> dict[str, list[int]]:
    """Add, change and delete some of `products` in a catalogue folder the way a day of
    catalogue work does, with exact ties (identical images) among the added and changed."""
    styles = root / "styles.csv"
    header, *lines = styles.read_text().splitlines()
    ids = sorted(products)
    rows = {int(line.split(",")[0]): line for line in lines
            if line.split(",")[0].isdigit() and int(line.split(",")[0]) in products}
    image = lambda pid: root / "images" / f"{pid}.jpg"  # noqa: E731

    def mirrored(pid: int) -> bytes:
        out = io.BytesIO()
        ImageOps.mirror(Image.open(image(pid)).convert("RGB")).save(out, "JPEG", quality=90)
        return out.getvalue()

    def with_id(line: str, pid: int) -> str:
        return ",".join([str(pid), *line.split(",")[1:]])

    new = [990_001, 990_002, 990_003]
    # A copy of the duplicated product's image (a three-way tie at 1.0), a new image, and an
    # existing row's labels with another product's image.
    shutil.copy(image(DUPLICATE_ID), image(new[0]))
    image(new[1]).write_bytes(mirrored(ids[5]))
    shutil.copy(image(ids[-3]), image(new[2]))
    added = [with_id(rows[DUPLICATE_ID], new[0]), with_id(rows[ids[5]], new[1]),
             with_id(rows[ids[7]], new[2])]
    # New images for two products (one becomes identical to another product's), new labels
    # for a third (its gender: with neighbours.same=[gender] it changes group).
    image_changed = [ids[10], ids[11]]
    shutil.copy(image(ids[12]), image(ids[10]))
    image(ids[11]).write_bytes(mirrored(ids[11]))
    relabelled = ids[14]
    fields = rows[relabelled].split(",")
    fields[1] = "Women" if fields[1] != "Women" else "Men"
    rows[relabelled] = ",".join(fields)
    # Deleted: the original of the duplicated image, and one more.
    deleted = [ids[0], ids[20]]
    assert DUPLICATE_ID not in deleted
    for pid in deleted:
        image(pid).unlink()
    kept = [rows.get(int(line.split(",")[0]), line) if line.split(",")[0].isdigit() else line
            for line in lines
            if not (line.split(",")[0].isdigit() and int(line.split(",")[0]) in deleted)]
    styles.write_text("\n".join([header, *kept, *added]) + "\n")
    return {"new": new, "image": image_changed, "labels": [relabelled], "deleted": deleted}


def neighbours_table(spark, warehouse) -> "pd.DataFrame":  # noqa: F821
    table = Catalog(spark, str(warehouse)).read("neighbours").select(*NEIGHBOUR_COLUMNS)
    return table.toPandas().sort_values(["product_id", "rank"]).reset_index(drop=True)


def product_ids(spark, warehouse) -> list[int]:
    return [r[0] for r in Catalog(spark, str(warehouse)).read("products").select("product_id").collect()]


def versions(warehouse: Path) -> dict[str, int]:
    return {name: DeltaTable(str(warehouse / name)).version() for name in TABLES
            if (warehouse / name / "_delta_log").exists()}


def full_recomputation(spark, cfg, tmp_path: Path, *steps) -> Path:
    """The warehouse copied without the tables `steps` write, and those steps run: what a
    full recomputation of them gives."""
    copy = tmp_path / "full"
    shutil.copytree(cfg.warehouse, copy)
    for name in ("neighbours", "duplicates"):
        shutil.rmtree(copy / name, ignore_errors=True)
    full = config_for(Path(cfg.data_dir), copy, Path(cfg.featurize.weights_cache),
                      *[f"neighbours.same=[{','.join(cfg.neighbours.same)}]"])
    for step in steps:
        assert not step(spark, full).metrics.get("incremental")
    return copy


@pytest.mark.slow  # every step, three times
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


@pytest.mark.slow  # trains a model, starts spark-submit
def test_a_refresh_killed_midway_is_completed_by_the_next(spark, warehouse_copy, tmp_path):
    from test_crash_safety import finish, start

    from lookbook.pipelines.classifier_steps import train
    from lookbook.pipelines.runner import run_job_steps

    catalogue = tmp_path / "catalogue"
    shutil.copytree(warehouse_copy.data_dir, catalogue)
    args = [f"data_dir={catalogue}", f"warehouse={warehouse_copy.warehouse}",
            f"featurize.weights_cache={warehouse_copy.featurize.weights_cache}"]
    cfg = config_for(catalogue, Path(warehouse_copy.warehouse),
                     Path(warehouse_copy.featurize.weights_cache), "train.epochs=2")
    model = train(spark, cfg).params["model"]
    first, _ = run_job_steps(spark, cfg, "refresh", lambda line: None)  # predictions, neighbours
    assert [d.name for d in first] == ["ingest", "augment", "featurize", "predict", "neighbours",
                                      "duplicates"]
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
    tables = Catalog(spark, cfg.warehouse)
    products = set(product_ids(spark, cfg.warehouse))
    now = tables.read("predictions").toPandas().set_index("product_id")
    assert set(now.index) == products and (now["run_id"] == model).all()
    # Only new and changed images were predicted; the others' rows are the same.
    unchanged = sorted(products - set(changed["new"]) - set(changed["image"]))
    assert now.loc[unchanged].sort_index().equals(predicted.loc[unchanged].sort_index())
    got = neighbours_table(spark, cfg.warehouse)
    reference = full_recomputation(spark, cfg, tmp_path, neighbours)
    assert got.equals(neighbours_table(spark, reference))



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
