"""What a step is: a function (spark, cfg) -> StepResult, registered with `@step` together with
what it reads, writes and is configured by.

Steps are orchestration: they read tables through the catalogue, call library functions with
plain arguments picked from the config, write tables and files, and describe what they did in
a `StepResult`. They do not print and do not track: the runner prints the summary and the
tracking module records the rest. The declarations are what pipelines are checked against
(`check_order`), what `--help` shows, which steps the catalogue says write a table, and which
tables' versions an incremental step records and computes its changes from (`Inputs`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from .. import tracking
from ..config import Config
from ..io.catalog import Catalog, Table, declare_writer
from ..io.tables import Written
from ..results import ModelToLog, StepResult

__all__ = ["STEPS", "Inputs", "ModelToLog", "Step", "StepResult", "catalog", "check_order",
           "committed", "step", "written_metrics", "written_summary"]

StepFunction = Callable[[SparkSession, Config], StepResult]


@dataclass(frozen=True, eq=False)
class Step:
    """A registered step: calling it runs the function. `reads` are the tables it computes
    from, besides those it writes (which it may read back to update them)."""
    name: str
    function: StepFunction
    reads: tuple[Table, ...]
    writes: tuple[Table, ...]
    settings: tuple[str, ...]  # the config sections and keys it uses (`--help` lists them)
    runs: tuple[Step, ...] = ()  # steps it runs itself, which declare their own tables

    def __call__(self, spark: SparkSession, cfg: Config) -> StepResult:
        return self.function(spark, cfg)

    @property
    def __name__(self) -> str:  # a step stands where its function did
        return self.name

    @property
    def doc(self) -> str:
        """What the step does: its docstring's first paragraph, on one line."""
        return " ".join((self.function.__doc__ or "").strip().split("\n\n", 1)[0].split())

    def inputs(self, tables: Catalog, settings: dict[str, str]) -> Inputs:
        """The versions of its reads in `tables`, now and as its output last recorded them.
        A step asks its own declaration: inside `def predict`, the module's `predict` is the
        registered Step, so `predict.inputs(tables, ...)`."""
        return Inputs(tables, self, settings)


STEPS: dict[str, Step] = {}


def step(*, reads: Iterable[Table], writes: Iterable[Table], settings: Iterable[str] = (),
         runs: Iterable[Step] = ()) -> Callable[[StepFunction], Step]:
    """Register the function as the job of its name (`./spark-submit.sh NAME`, pipelines),
    declaring the tables it reads and writes (`()` for none), the config sections and keys
    it uses, and the steps it runs itself. The name is the function's: no job name is
    written as a string (two are also table names)."""
    def register(function: StepFunction) -> Step:
        name = function.__name__
        if name in STEPS:
            raise ValueError(f"step {name!r} is registered twice")
        declared = Step(name, function, tuple(reads), tuple(writes), tuple(settings),
                        tuple(runs))
        for table in declared.writes:
            declare_writer(name, table)
        STEPS[name] = declared
        return declared
    return register


def check_order(pipeline: str, steps: list[Step]) -> None:
    """A step must not read a table that a later step of the same pipeline writes: it would
    compute from the previous run's version."""
    for i, first in enumerate(steps):
        for later in steps[i + 1:]:
            clash = sorted(set(first.reads) & set(later.writes))
            if clash:
                raise ValueError(f"pipeline {pipeline!r}: step {first.name!r} reads "
                                 f"{', '.join(clash)}, which the later step {later.name!r} "
                                 f"writes; run {later.name!r} first")


INPUT = "lookbook.input."  # commit metadata: lookbook.input.<table> = the version computed from


@dataclass(frozen=True)
class Inputs:
    """The versions of a step's declared reads: those it computes from now (`current`, commit
    metadata of its writes) and those its output was last computed from (`since`), read from
    the newest commit of its first declared write that readers see. An incremental step
    computes only what changed since; `settings` (commit metadata too) must be the same as
    then for the recorded versions to count."""
    tables: Catalog
    step: Step
    settings: dict[str, str]

    def current(self) -> dict[str, str]:
        """The settings and the version read of each declared read that exists."""
        return {**self.settings, **{f"{INPUT}{t}": str(self.tables.version(t))
                                    for t in self.step.reads if self.tables.exists(t)}}

    def recorded(self, table: Table) -> int | None:
        """The version of `table` the output was computed from, when every output exists and
        was computed with these settings; else None."""
        recorded = self._recorded()
        version = recorded.get(f"{INPUT}{table}")
        if version is None or any(recorded.get(k) != v for k, v in self.settings.items()):
            return None
        return int(version)

    def since(self, table: Table) -> int | None:
        """`recorded(table)` while that version can still be read; None: compute everything."""
        version = self.recorded(table)
        return version if version is not None and self.tables.readable(table, version) else None

    def since_all(self) -> dict[Table, int] | None:
        """`since` of every declared read, or None when any is None."""
        versions = {table: self.since(table) for table in self.step.reads}
        return None if None in versions.values() else versions

    def _recorded(self) -> dict[str, str]:
        """The lookbook metadata of the newest commit a reader sees of the first output, {}
        when an output is missing."""
        if not all(self.tables.exists(t) for t in self.step.writes):
            return {}
        output = self.step.writes[0]
        visible = self.tables.version(output)  # not a commit whose batch never completed
        for commit in self.tables.history(output):  # newest first; a vacuum's commits carry none
            if "lookbook.job" in commit and commit["version"] <= visible:
                return {k: str(v) for k, v in commit.items() if k.startswith("lookbook.")}
        return {}


def catalog(spark: SparkSession, cfg: Config) -> Catalog:
    """The warehouse's tables; commits name the tracking run they belong to."""
    return Catalog(spark, cfg.warehouse, tracking.active_run_id(),
                   cfg.tables.products_per_file)


def committed(written: dict[Table, Written]) -> dict[Table, int]:
    """The versions the writes committed (StepResult.outputs); tables left as they were are
    not named."""
    return {name: w.version for name, w in written.items() if w.version is not None}


def written_metrics(written: dict[Table, Written]) -> dict[str, float]:
    """What each table write did, as metrics: `written.<table>.bytes` and file counts."""
    out = {}
    for name, w in written.items():
        out.update({f"written.{name}.bytes": w.bytes_written,
                    f"written.{name}.files_added": w.files_added,
                    f"written.{name}.files_removed": w.files_removed,
                    f"written.{name}.files_kept": w.files_kept,
                    f"written.{name}.committed": int(w.version is not None)})
    return out


def written_summary(written: dict[Table, Written]) -> str:
    return "\n".join(
        f"{name:<20} " + (f"version {w.version}: {w.bytes_written / 2**20:,.2f} MiB written in "
                          f"{w.files_added} files, {w.files_removed} files replaced, "
                          f"{w.files_kept} kept" if w.version is not None
                          else f"unchanged ({w.files_kept} files), nothing committed")
        for name, w in written.items())
