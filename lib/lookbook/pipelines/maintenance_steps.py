"""Keeping a warehouse tidy: `vacuum` deletes the files no recent version needs."""
from __future__ import annotations

import shutil
import time

from pyspark.sql import SparkSession

from ..config import Config
from ..io.catalog import Table
from ..models.store import abandoned_partials
from .base import StepResult, catalog, step


@step(reads=tuple(Table), writes=(), settings=("vacuum", "model.dir"))
def vacuum(spark: SparkSession, cfg: Config) -> StepResult:
    """Delete the files of every table that no version of the last retention_hours needs
    (no table's content changes), and model saves that never completed."""
    tables = catalog(spark, cfg)
    v = cfg.vacuum
    verb = "would delete" if v.dry_run else "deleted"
    lines, metrics = [], {}
    n_files = n_bytes = 0
    for name in Table:
        if not tables.on_disk(name):
            continue
        files, size = tables.vacuum(name, v.retention_hours, v.dry_run)
        n_files, n_bytes = n_files + len(files), n_bytes + size
        metrics[f"files.{name}"], metrics[f"bytes.{name}"] = len(files), size
        lines.append(f"{name:<20} {verb} {len(files):>6,} files, {size / 2**20:>9,.1f} MiB")
        lines += [f"    {f}" for f in files] if v.dry_run else []
    partials = abandoned_partials(cfg.models_dir, time.time() - v.retention_hours * 3600)
    for folder in partials:
        lines.append(f"models/{folder.name:<13} {verb} (a save that never completed)")
        if not v.dry_run:
            shutil.rmtree(folder)
    metrics.update(files=n_files, bytes=n_bytes, model_partials=len(partials))
    return StepResult(
        f"{verb} {n_files:,} files ({n_bytes / 2**20:,.1f} MiB) older than "
        f"{v.retention_hours} h that no current version needs"
        + (f", and {len(partials)} unfinished model saves" if partials else ""),
        details="\n".join(lines),
        metrics=metrics)
