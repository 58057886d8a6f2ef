"""MLflow tracking: what a step returns is readable back with the MLflow client; a pipeline is
a run with nested step runs; a failing step ends its run FAILED; disabled means no store."""
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from lookbook import tracking
from lookbook.config import load_config
from lookbook.metric_names import metric_name
from lookbook.models.store import save_classifier
from lookbook.pipelines.base import ModelToLog, StepResult
from lookbook.pipelines.runner import run_job_steps
from lookbook.tracking import Tracker, store_uri

from helpers import TINY_INFO as INFO
from helpers import tiny_classifier


def config(tmp_path, *overrides):
    return load_config(None, [f"warehouse={tmp_path / 'wh'}", *overrides])


def client_for(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=store_uri(cfg))


def test_a_step_result_reads_back_from_the_store(tmp_path):
    cfg = config(tmp_path, "train.epochs=7")
    report = tmp_path / "report"
    report.mkdir()
    (report / "index.html").write_text("<h1>hi</h1>")
    (tmp_path / "curves.png").write_bytes(b"png")
    result = StepResult("did it", details="a table", params={"features.backbone": "vgg16"},
                        metrics={"examples": 12, "precision@5.articleType+usage": 0.5},
                        history={"loss": [0.9, 0.5, 0.4]}, outputs={"products": 3},
                        artefacts=[report, tmp_path / "curves.png"])
    tracker = Tracker(cfg)
    with tracker.run("train", tags={"lookbook.job": "train"}) as run_id:
        assert tracking.active_run_id() == run_id
        tracker.record(result, seconds=1.5)
    assert tracking.active_run_id() is None
    client = client_for(cfg)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert run.data.params["train.epochs"] == "7" and run.data.params["features.backbone"] == "vgg16"
    assert run.data.metrics["examples"] == 12 and run.data.metrics["seconds"] == 1.5
    assert run.data.metrics[metric_name("precision@5.articleType+usage")] == 0.5
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == \
        [(1, 0.9), (2, 0.5), (3, 0.4)]
    assert run.data.tags["lookbook.output.products"] == "3"
    assert run.data.tags["mlflow.note.content"] == "did it\n\na table"
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "curves.png", "report"} <= names
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/index.html"]
    assert (Path(cfg.warehouse) / "mlflow.db").is_file()
    assert str(Path(cfg.warehouse).resolve() / "mlartifacts") in run.info.artifact_uri


def test_a_failing_step_ends_its_run_failed(tmp_path):
    cfg = config(tmp_path)
    tracker = Tracker(cfg)
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.run("featurize"):
            raise RuntimeError("boom")
    [run] = client_for(cfg).search_runs([tracker.experiment_id])
    assert run.info.status == "FAILED"


def test_disabled_tracking_records_nothing(tmp_path):
    cfg = config(tmp_path, "tracking.enabled=false")
    tracker = Tracker(cfg)
    with tracker.run("ingest") as run_id:
        tracker.record(StepResult("x", metrics={"n": 1}), 0.1)
    assert run_id is None and not (tmp_path / "wh").exists()


def test_where_the_store_is(tmp_path, monkeypatch):
    assert store_uri(config(tmp_path)) == f"sqlite:///{(tmp_path / 'wh').resolve()}/mlflow.db"
    assert store_uri(config(tmp_path, "tracking.uri=http://mlflow:5000")) == "http://mlflow:5000"
    # MLflow exports the store it was last given; a later job's warehouse must still win.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert store_uri(config(tmp_path)) == f"sqlite:///{(tmp_path / 'wh').resolve()}/mlflow.db"
    with pytest.raises(ValueError, match="set tracking.uri"):
        store_uri(load_config(None, ["warehouse=s3a://lake/lookbook"]))


def test_the_classifier_is_an_mlflow_model_that_loads_in_a_fresh_process(tmp_path):
    cfg = config(tmp_path)
    model = tiny_classifier()
    folder = save_classifier(model, INFO, str(tmp_path / "models"), "run-a")
    tracker = Tracker(cfg)
    with tracker.run("train") as run_id:
        tracker.record(StepResult("trained", model=ModelToLog(folder / "model.keras",
                                                              INFO["labels"])), 1.0)
    [logged] = mlflow.search_logged_models(experiment_ids=[tracker.experiment_id],
                                           output_format="list")
    assert logged.source_run_id == run_id and logged.name == "classifier"
    uri = f"models:/{logged.model_id}"
    signature = mlflow.models.get_model_info(uri).signature
    assert signature.inputs.inputs[0].shape == (-1, -1, -1, 3)
    assert signature.outputs.inputs[0].shape == (-1, 3)
    images = np.random.default_rng(1).uniform(0, 255, (4, 10, 7, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = ("import mlflow, numpy as np\n"
              f"mlflow.set_tracking_uri({store_uri(cfg)!r})\n"
              f"model = mlflow.pyfunc.load_model({uri!r})\n"
              f"np.save({str(tmp_path / 'p.npy')!r}, model.predict(np.load("
              f"{str(tmp_path / 'images.npy')!r})))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), model.predict(images, verbose=0),
                               atol=1e-6)


def test_a_job_through_the_runner_is_one_run(spark, warehouse_copy):
    from dataclasses import replace

    cfg = warehouse_copy
    done, run_id = run_job_steps(spark, cfg, "report", progress=lambda line: None)
    run = client_for(cfg).get_run(run_id)
    assert run.info.run_name == "report" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.metrics["classes"] == done[0].result.metrics["classes"] > 1
    artefacts = {a.path for a in client_for(cfg).list_artifacts(run_id, "catalogue")}
    assert "catalogue/class_balance.png" in artefacts
    off = replace(cfg, tracking=replace(cfg.tracking, enabled=False),
                  warehouse=str(Path(cfg.warehouse).parent / "untracked"))
    Path(cfg.warehouse).rename(off.warehouse)
    (Path(off.warehouse) / "mlflow.db").unlink()
    assert run_job_steps(spark, off, "report", progress=lambda line: None)[1] is None
    assert not (Path(off.warehouse) / "mlflow.db").exists()
