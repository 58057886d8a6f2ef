"""Trained classifiers on disk: one folder per training run under `<warehouse>/models/`.

A folder holds everything needed to use the model, and nothing about how it scored: the Keras
model (`model.keras`: raw RGB of any size -> class probabilities) and `model.json` (the label
column, the labels in output order, the input size, the feature settings and the split it was
trained with, when it was made). Training history and metrics are run records: they live in
the tracking store (MLflow), keyed by the same run id; the pictures of them (training curves,
`evaluation/`) are written beside the model, for a look without MLflow. Evaluate and predict
add `head.keras` (the model's head alone, features -> probabilities: what predict applies to
stored features) and `<sha256 prefix>-model.keras`, a hard link to `model.keras` named by its content: the
name it is shipped to the executors under (io/files.py).

`latest` is the complete folder made last. A folder is written under a temporary name and
renamed when complete, so a crash mid-save never leaves a model that `latest` could pick.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.keras"
HEAD_FILE = "head.keras"
INFO_FILE = "model.json"
LATEST = "latest"
FEATURES_INFO = "features"  # model.json: the settings of the feature rows the head trained on


@dataclass(frozen=True)
class TrainedClassifier:
    run_id: str
    folder: Path
    info: dict  # label_column, labels, input_size, features, split, created, ...

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def labels(self) -> list[str]:
        return self.info["labels"]

    @property
    def label_column(self) -> str:
        return self.info["label_column"]

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.info["input_size"]
        return height, width


def new_run_id() -> str:
    """A run id where no tracking run gives one: sortable by time, unique."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def save_classifier(model, info: dict, models_dir: str, run_id: str) -> Path:
    """Write `models_dir/run_id/` with the model and its info (plus `created`), atomically."""
    models = Path(models_dir)
    folder = models / run_id
    if folder.exists():
        raise FileExistsError(f"a model {run_id!r} already exists in {models}")
    partial = models / f".{run_id}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save(partial / MODEL_FILE)
    info = {**info, "run_id": run_id, "created": time.time()}
    (partial / INFO_FILE).write_text(json.dumps(info, indent=1, default=str))
    os.replace(partial, folder)
    return folder


def abandoned_partials(models_dir: str, older_than: float) -> list[Path]:
    """Folders of saves that never completed (the process died), last changed before
    `older_than` (a time): a save in progress is younger."""
    return sorted(p for p in Path(models_dir).glob(".*.partial-*")
                  if p.is_dir() and p.stat().st_mtime < older_than)


def trained_models(models_dir: str) -> list[TrainedClassifier]:
    """Every complete model folder, oldest first."""
    found = []
    for folder in Path(models_dir).glob("*"):
        if folder.name.startswith(".") or not (folder / MODEL_FILE).is_file():
            continue
        info_file = folder / INFO_FILE
        if info_file.is_file():
            found.append(TrainedClassifier(folder.name, folder, json.loads(info_file.read_text())))
    return sorted(found, key=lambda m: (m.info.get("created", 0), m.run_id))


def find_model(models_dir: str, ref: str = LATEST) -> TrainedClassifier:
    """The model `ref` names: a run id, or "latest". Reads its info, not the model itself."""
    models = trained_models(models_dir)
    if not models:
        raise FileNotFoundError(f"no trained model under {models_dir}: run the train job first")
    if ref == LATEST:
        return models[-1]
    for model in models:
        if model.run_id == ref:
            return model
    known = [m.run_id for m in models]
    raise FileNotFoundError(f"no model {ref!r} under {models_dir}; known runs (oldest first): "
                            f"{', '.join(known)}, or {LATEST!r}")


def head_path(trained: TrainedClassifier) -> Path:
    """`head.keras` of the model's folder, extracted from the model on first use: workers
    that classify stored features load about 1 MB, not the whole backbone."""
    path = trained.folder / HEAD_FILE
    if not path.exists():
        partial = path.with_name(f".{os.getpid()}.{HEAD_FILE}")
        load_model(trained.model_path).get_layer("head").save(partial)
        os.replace(partial, path)
    return path


def load_model(path: str | Path):
    """The saved Keras model; importing features.feature_model registers its custom layers."""
    import keras

    from ..features import feature_model  # noqa: F401  (registers lookbook>Preprocess, ...)

    return keras.saving.load_model(path, compile=False)
