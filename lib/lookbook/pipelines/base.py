"""What a step is: a function (spark, cfg) -> StepResult, registered by name with `@step`.

Steps are orchestration: they read tables through the catalogue, call library functions with
plain arguments picked from the config, write tables and files, and describe what they did in
a `StepResult`. They do not print and do not track: the runner prints the summary and the
tracking module records the rest.
"""
from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession

from .. import tracking
from ..config import Config
from ..io.catalog import Catalog
from ..results import ModelToLog, StepResult

__all__ = ["STEPS", "ModelToLog", "Step", "StepResult", "catalog", "step"]


Step = Callable[[SparkSession, Config], StepResult]
STEPS: dict[str, Step] = {}


def step(name: str) -> Callable[[Step], Step]:
    """Register a step under its job name: `./spark-submit.sh NAME` and pipelines run it."""
    def register(function: Step) -> Step:
        if name in STEPS:
            raise ValueError(f"step {name!r} is registered twice")
        STEPS[name] = function
        return function
    return register


def catalog(spark: SparkSession, cfg: Config) -> Catalog:
    """The warehouse's tables; commits name the tracking run they belong to."""
    return Catalog(spark, cfg.warehouse, tracking.active_run_id())
