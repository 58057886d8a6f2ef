"""Orchestration: steps by area, and the named pipelines that chain them.

    catalogue.py   ingest, report
    features.py    featurize
    classifier.py  train, evaluate, predict
    similarity.py  neighbours, evaluate_neighbours, duplicates, similar
    maintenance.py vacuum

Every step is a job of its own (`./spark-submit.sh STEP`); `./spark-submit.sh pipeline
name=NAME` runs one of PIPELINES in order. Domain packages (io, features, models,
similarity, reports) never import from here.
"""
from __future__ import annotations

from . import catalogue, classifier, features, maintenance, similarity  # noqa: F401  (register their steps)
from .base import STEPS, Step, StepResult

__all__ = ["PIPELINES", "STEPS", "Step", "StepResult", "pipeline_steps"]

PIPELINES: dict[str, list[str]] = {
    "full": ["ingest", "featurize", "report", "train", "evaluate", "predict", "neighbours",
             "evaluate_neighbours", "duplicates"],
}


def pipeline_steps(name: str) -> list[str]:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"no pipeline {name!r}; pipelines: "
                         + "; ".join(f"{n} ({', '.join(s)})" for n, s in PIPELINES.items())) from None
