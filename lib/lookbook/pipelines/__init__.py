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
    compare_steps,
    maintenance_steps,
    sql_steps,
)
from .augment_steps import augment
from .base import STEPS, Step, StepResult, check_order
from .catalogue_steps import ingest, report
from .classifier_steps import evaluate, predict, train
from .feature_steps import featurize
from .neighbour_steps import duplicates, evaluate_neighbours, neighbours

__all__ = ["ABOUT", "PIPELINES", "RETRAIN", "STEPS", "Step", "StepResult", "describe",
           "pipeline_steps"]


def names(*steps: Step) -> list[str]:
    return [s.name for s in steps]


# Each list is in an order the declarations allow (`check_order`): no step reads a table that
# a later one writes.
PIPELINES: dict[str, list[str]] = {
    "full": names(ingest, augment, featurize, report, train, evaluate, predict, neighbours,
                  evaluate_neighbours, duplicates),
    "refresh": names(ingest, augment, featurize, train, evaluate, predict, neighbours,
                     duplicates),
}
ABOUT = {  # what each is for (`--help`)
    "full": "Every step, from the catalogue folder to the reports.",
    "refresh": "The nightly job (`./spark-submit.sh refresh`): every step computes only what "
               "changed since the tables were last written, and commits nothing when nothing "
               "did.",
}
# Steps of a pipeline run only with refresh.retrain=true (`refresh retrain=true`), where its
# list places them: a new model is trained and evaluated before predict uses it.
RETRAIN: dict[str, list[str]] = {"refresh": names(train, evaluate)}


def pipeline_steps(name: str, retrain: bool = False) -> list[str]:
    """The steps pipeline `name` runs, in order, checked against their declarations."""
    if name not in PIPELINES:
        raise ValueError(f"no pipeline {name!r}; pipelines: " + "; ".join(
            f"{n} ({', '.join(describe(n))})" for n in PIPELINES))
    optional = [] if retrain else RETRAIN.get(name, [])
    steps = [s for s in PIPELINES[name] if s not in optional]
    check_order(name, [STEPS[s] for s in steps])
    return steps


def describe(name: str) -> list[str]:
    """The pipeline's steps, those run only with retrain=true marked."""
    return [f"{s} [retrain=true]" if s in RETRAIN.get(name, []) else s for s in PIPELINES[name]]
