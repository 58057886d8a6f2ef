"""Run tracking in MLflow: the one module that talks to it.

Every job is one MLflow run, and a pipeline is a run with a nested run per step. Each run
records the effective configuration (as params and as `config.yaml`) and what its step
returned: params, metrics, per-epoch history, the table versions it committed (tags
`lookbook.output.<table>`), its files as artefacts, and for `train` the classifier as an MLflow
model with its signature (raw RGB images of any size -> class probabilities).

The store is `tracking.uri` (a server: http://host:5000, databricks, ...), else a local one in
the warehouse (`<warehouse>/mlflow.db`, artefacts in `<warehouse>/mlartifacts`) that needs no
server: `mlflow ui --backend-store-uri sqlite:///<absolute warehouse>/mlflow.db`. The
MLFLOW_TRACKING_URI variable is not read: MLflow sets it itself once a store is chosen, so in a
process that runs jobs for two warehouses it would send the second one's runs to the first.
"""
import contextlib
import fcntl
import json
import logging
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from .config import Config, config_yaml, flat_config
from .metric_names import metric_name
from .results import ModelToLog, StepResult

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# What the logged classifier needs to load elsewhere (besides lookbook, shipped as code).
MODEL_REQUIREMENTS = ["tensorflow-cpu==2.21.0", "keras==3.15.1", "numpy==1.26.4", "pillow"]
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def active_run_id() -> str | None:
    """The MLflow run this process is recording into, if any."""
    run = mlflow.active_run()
    return run.info.run_id if run else None


def store_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if "://" in cfg.warehouse:
        raise ValueError(f"the warehouse {cfg.warehouse} is not a local folder, so the default "
                         "tracking store cannot live in it: set tracking.uri to your MLflow "
                         "server (or tracking.enabled=false)")
    return f"sqlite:///{Path(cfg.warehouse).resolve() / 'mlflow.db'}"


def artefact_root(cfg: Config) -> str | None:
    """Where a new experiment keeps its artefacts: beside a local store; a server decides."""
    uri = store_uri(cfg)
    if uri.startswith("sqlite:///") and not cfg.tracking.uri:
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[:_MAX_PARAM_LENGTH - 1] + "…"


@contextlib.contextmanager
def _store_setup_lock(cfg: Config) -> Iterator[None]:
    """Two jobs starting at once on a new warehouse would both create the local store's
    schema (MLflow's migrations then fail in one of them): one does it at a time."""
    uri = store_uri(cfg)
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_file = Path(uri.removeprefix("sqlite:///")).with_suffix(".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _experiment_id(cfg: Config) -> str:
    client = mlflow.MlflowClient()
    name = cfg.tracking.experiment
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artefact_root(cfg))
    except mlflow.exceptions.MlflowException:  # another job on a shared server created it
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class Tracker:
    """Opens runs and records step results; does nothing when tracking is disabled."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.enabled = cfg.tracking.enabled
        self.experiment_id = None
        if not self.enabled:
            return
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(store_uri(cfg))
        with _store_setup_lock(cfg):
            self.experiment_id = _experiment_id(cfg)

    @property
    def uri(self) -> str | None:
        return store_uri(self.cfg) if self.enabled else None

    @contextlib.contextmanager
    def run(self, name: str, nested: bool = False, tags: dict[str, str] | None = None,
            params: dict[str, Any] | None = None) -> Iterator[str | None]:
        """An MLflow run (nested in the active one if asked) with the config (and `params`)
        recorded; yields its id, or None when tracking is disabled. A step that raises ends
        it FAILED."""
        if not self.enabled:
            yield None
            return
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=nested,
                              tags={"lookbook.step": name, **(tags or {})}) as run:
            mlflow.log_params({metric_name(k): param_value(v)
                               for k, v in {**flat_config(self.cfg), **(params or {})}.items()})
            mlflow.log_text(config_yaml(self.cfg), "config.yaml")
            yield run.info.run_id

    def record(self, result: StepResult, seconds: float,
               tags: dict[str, str] | None = None) -> None:
        """Everything a step returned (and `tags`), into the active run."""
        if not self.enabled:
            return
        if result.params:
            mlflow.log_params({metric_name(k): param_value(v) for k, v in result.params.items()})
        metrics = {metric_name(k): float(v) for k, v in result.metrics.items()
                   if v is not None and np.isfinite(v)}
        mlflow.log_metrics({**metrics, "seconds": seconds})
        if result.history:
            run_id = active_run_id()
            stamp = int(mlflow.get_run(run_id).info.start_time)
            epochs = [Metric(metric_name(k), float(v), stamp, step)
                      for k, values in result.history.items()
                      for step, v in enumerate(values, 1)]
            mlflow.MlflowClient().log_batch(run_id, metrics=epochs)
        mlflow.set_tags({"mlflow.note.content": "\n\n".join(filter(None, [result.summary,
                                                                           result.details])),
                         **{f"lookbook.output.{t}": str(v) for t, v in result.outputs.items()},
                         **(tags or {})})
        for path in result.artefacts:
            path = Path(path)
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.is_file():
                mlflow.log_artifact(str(path))
        if result.model is not None:
            log_classifier(result.model)

    def tagged_runs(self, tag: str, value: str) -> pd.DataFrame:
        """The experiment's runs whose `tag` is `value`, as mlflow.search_runs' frame: a
        column per param, metric and tag ("params.x", "metrics.y", "tags.z")."""
        return mlflow.search_runs(experiment_ids=[self.experiment_id],
                                  filter_string=f"tags.`{tag}` = '{value}'")

    def record_pipeline(self, steps: list[tuple[str, float, str]]) -> None:
        """The parent run of a pipeline: seconds per step, and the summary table."""
        if not self.enabled:
            return
        mlflow.log_metrics({metric_name(f"seconds.{name}"): s for name, s, _ in steps}
                           | {"seconds": sum(s for _, s, _ in steps)})
        mlflow.set_tag("mlflow.note.content", "\n".join(f"{name}: {summary}"
                                                        for name, _, summary in steps))


def log_classifier(model: ModelToLog) -> None:
    """The saved Keras classifier as an MLflow pyfunc model: its Keras file, the lookbook
    package as code (the model's input normalisation is a lookbook layer) and a signature of
    raw float32 RGB images of any size -> one probability per label."""
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(model.labels)))]))
    # MLflow warns that the wrapper is pickled (it is our own class, pickled by reference) and
    # that no input example is given (the signature says it all; an example would be a photo).
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
            mlflow.pyfunc.log_model(
                name=model.name, python_model=KerasClassifier(),
                artifacts={"keras": str(model.path)}, code_paths=[str(package_folder(Path(tmp)))],
                signature=signature, pip_requirements=MODEL_REQUIREMENTS,
                metadata={"labels": model.labels, "input": "RGB images, any size, 0..255"})
    finally:
        pyfunc_log.setLevel(level)


def package_folder(tmp: Path) -> Path:
    """The lookbook package as a folder: where it is, or extracted from the zip that
    spark-submit's --py-files puts on the driver's path."""
    if PACKAGE_DIR.is_dir():
        return PACKAGE_DIR
    archive = PACKAGE_DIR.parent  # .../lookbook.zip
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp, [n for n in zf.namelist() if n.startswith(f"{PACKAGE_DIR.name}/")])
    return tmp / PACKAGE_DIR.name


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """Loads the Keras file with lookbook's layers registered; predicts probabilities."""

    def load_context(self, context):
        from lookbook.models.store import load_model

        self.model = load_model(context.artifacts["keras"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return np.asarray(self.model.predict(np.asarray(model_input, dtype="float32"),
                                             verbose=0))
