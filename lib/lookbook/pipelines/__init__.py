"""Orchestration: steps by area, and the named pipelines that chain them.

    catalogue.py   ingest, report
    augment.py     augment
    features.py    featurize
    classifier.py  train, evaluate, predict
    similarity.py  neighbours, evaluate_neighbours, duplicates, similar
    maintenance.py vacuum
    sql.py         sql, sql_server
    compare.py     compare (feature models side by side)

Every step is a job of its own (`./spark-submit.sh STEP`); `./spark-submit.sh pipeline
name=NAME` runs one of PIPELINES in order. Domain packages (io, features, models,
similarity, reports) never import from here.
"""
from __future__ import annotations

from . import (  # noqa: F401  (register their steps)
    augment,
    catalogue,
    classifier,
    compare,
    features,
    maintenance,
    similarity,
    sql,
)
from .base import STEPS, Step, StepResult

__all__ = ["PIPELINES", "STEPS", "Step", "StepResult", "pipeline_steps"]

PIPELINES: dict[str, list[str]] = {
    "full": ["ingest", "augment", "featurize", "report", "train", "evaluate", "predict", "neighbours",
             "evaluate_neighbours", "duplicates"],
    # The nightly job (`./spark-submit.sh refresh`): every step computes only what changed
    # since the tables were last written, and commits nothing when nothing did.
    "refresh": ["ingest", "augment", "featurize", "predict", "neighbours", "duplicates"],
}
RETRAIN_STEPS = ["train", "evaluate"]  # inserted before predict with refresh.retrain=true


def pipeline_steps(name: str, retrain: bool = False) -> list[str]:
    try:
        steps = PIPELINES[name]
        if name == "refresh" and retrain:
            at = steps.index("predict")
            steps = steps[:at] + RETRAIN_STEPS + steps[at:]
        return steps
    except KeyError:
        raise ValueError(f"no pipeline {name!r}; pipelines: "
                         + "; ".join(f"{n} ({', '.join(s)})" for n, s in PIPELINES.items())) from None
