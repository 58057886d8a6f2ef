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
from ..io.tables import Written
from ..results import ModelToLog, StepResult

__all__ = ["STEPS", "ModelToLog", "Step", "StepResult", "catalog", "committed", "input_versions",
           "recorded_inputs", "step", "written_metrics", "written_summary"]


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
    return Catalog(spark, cfg.warehouse, tracking.active_run_id(),
                   cfg.tables.products_per_file)


def committed(written: dict[str, Written]) -> dict[str, int]:
    """The versions the writes committed (StepResult.outputs); tables left as they were are
    not named."""
    return {name: w.version for name, w in written.items() if w.version is not None}


def written_metrics(written: dict[str, Written]) -> dict[str, float]:
    """What each table write did, as metrics: `written.<table>.bytes` and file counts."""
    out = {}
    for name, w in written.items():
        out.update({f"written.{name}.bytes": w.bytes_written,
                    f"written.{name}.files_added": w.files_added,
                    f"written.{name}.files_removed": w.files_removed,
                    f"written.{name}.files_kept": w.files_kept,
                    f"written.{name}.committed": int(w.version is not None)})
    return out


def written_summary(written: dict[str, Written]) -> str:
    return "\n".join(
        f"{name:<20} " + (f"version {w.version}: {w.bytes_written / 2**20:,.2f} MiB written in "
                          f"{w.files_added} files, {w.files_removed} files replaced, "
                          f"{w.files_kept} kept" if w.version is not None
                          else f"unchanged ({w.files_kept} files), nothing committed")
        for name, w in written.items())


def input_versions(tables: Catalog, *names: str) -> dict[str, str]:
    """Commit metadata naming the versions of the tables a step computed from: the next run
    computes only what changed since (`recorded_inputs`)."""
    return {f"lookbook.input.{name}": str(tables.version(name)) for name in names}


def recorded_inputs(tables: Catalog, name: str) -> dict[str, str]:
    """The metadata of the newest commit a reader sees of table `name` (see
    `input_versions`), {} if none."""
    if not tables.exists(name):
        return {}
    visible = tables.version(name)  # not a commit whose batch never completed
    for commit in tables.history(name):  # newest first; a vacuum's commits carry none
        if "lookbook.job" in commit and commit["version"] <= visible:
            return {k: str(v) for k, v in commit.items() if k.startswith("lookbook.")}
    return {}
