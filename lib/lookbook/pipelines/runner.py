"""Running a job: its steps in order, each one tracked, with progress for the console."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from ..config import Config
from ..io.tables import WriteConflict
from ..tracking import Tracker
from . import STEPS, StepResult, pipeline_steps

PIPELINE_JOB = "pipeline"
REFRESH_JOB = "refresh"  # `pipeline name=refresh`, the nightly job, under its own name


@dataclass
class StepRun:
    name: str
    seconds: float
    result: StepResult
    run_id: str | None  # the MLflow run


def job_names() -> list[str]:
    return sorted([*STEPS, PIPELINE_JOB, REFRESH_JOB])


def pipeline_name(job: str, cfg: Config) -> str | None:
    """The named pipeline a job runs, or None for a single step."""
    return {PIPELINE_JOB: cfg.pipeline.name, REFRESH_JOB: REFRESH_JOB}.get(job)


def job_steps(job: str, cfg: Config) -> list[str]:
    """The steps the job runs, in order; a pipeline's checked against the steps' declarations
    (`check_order`) before anything runs."""
    name = pipeline_name(job, cfg)
    if name is not None:
        return pipeline_steps(name, cfg.refresh.retrain)
    if job not in STEPS:
        raise ValueError(f"no job {job!r}; jobs: {', '.join(job_names())}")
    return [job]


def run_job_steps(spark: SparkSession, cfg: Config, job: str,
                  progress: Callable[[str], None]) -> tuple[list[StepRun], str | None]:
    """Run the job's steps; returns what each did and the job's MLflow run id. A pipeline is
    one run with a nested run per step; a single step is one run."""
    steps = job_steps(job, cfg)
    tracker = Tracker(cfg)
    done: list[StepRun] = []
    pipeline = pipeline_name(job, cfg)
    if pipeline is None:
        with tracker.run(job, tags={"lookbook.job": job}) as run_id:
            done.append(_run_step(spark, cfg, tracker, job, run_id, 1, 1, progress))
        return done, run_id
    name = f"{PIPELINE_JOB}:{pipeline}"
    with tracker.run(name, tags={"lookbook.job": job, "lookbook.pipeline": pipeline}) as parent_id:
        for i, step in enumerate(steps, 1):
            with tracker.run(step, nested=True, tags={"lookbook.pipeline": pipeline}) \
                    as run_id:
                done.append(_run_step(spark, cfg, tracker, step, run_id, i, len(steps), progress))
        tracker.record_pipeline([(d.name, d.seconds, d.result.summary) for d in done])
    return done, parent_id


def _run_step(spark: SparkSession, cfg: Config, tracker: Tracker, step: str,
              run_id: str | None, i: int, n: int, progress: Callable[[str], None]) -> StepRun:
    progress(f"[{i}/{n}] {step} ...")
    started = time.time()
    result = _run_until_committed(spark, cfg, step, lambda line: progress(f"[{i}/{n}] {line}"))
    seconds = time.time() - started
    tracker.record(result, seconds)
    progress(f"[{i}/{n}] {step} done in {seconds:.1f} s: {result.summary}")
    if result.details:
        progress(result.details)
    return StepRun(step, seconds, result, run_id)


def _run_until_committed(spark: SparkSession, cfg: Config, step: str,
                         progress: Callable[[str], None]) -> StepResult:
    """Run the step; when another job committed a table it writes after the step read it,
    run it again on the new version (a step is a function of the tables it reads)."""
    retries = cfg.tables.conflict_retries
    for attempt in range(retries + 1):
        try:
            return STEPS[step](spark, cfg)
        except WriteConflict as conflict:
            if attempt == retries:
                raise RuntimeError(f"{step}: gave up after {retries + 1} attempts, each "
                                   f"overtaken by another job: {conflict}") from conflict
            progress(f"{step}: {conflict} Running it again ({attempt + 1}/{retries}).")
    raise AssertionError("unreachable")
