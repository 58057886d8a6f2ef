"""Orchestration: steps by area, and the named pipelines that chain them.

    catalogue_steps.py   ingest, report
    augment_steps.py     augment
    feature_steps.py     featurize
    classifier_steps.py  train, evaluate, predict
    neighbour_steps.py   neighbours, evaluate_neighbours, duplicates, similar
    maintenance_steps.py vacuum
    sql_steps.py         sql, sql_server
    compare_steps.py     compare (feature models side by side)

The modules are named `*_steps` so that none shares its name with a domain package.

Every step is a job of its own (`./spark-submit.sh STEP`); `./spark-submit.sh pipeline
name=NAME` runs one of PIPELINES in order. Domain packages (io, features, models,
similarity, reports) never import from here.
"""
from __future__ import annotations

from . import (  # noqa: F401  (register their steps)
    augment_steps,
    catalogue_steps,
    classifier_steps,
    compare_steps,
    feature_steps,
    maintenance_steps,
    neighbour_steps,
    sql_steps,
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
