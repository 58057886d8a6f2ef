"""The compare job: feature models side by side, each trained and evaluated alike.

    ./spark-submit.sh compare backbones=vgg16,efficientnetlite0 sizes=80x60,160x120 \\
        precisions=fp32,bf16 [random_init=vgg16]

One MLflow run per combination, nested in the job's: the featurize, train and evaluate steps
with the combination's featurize settings (feature rows already computed are reused; models go
to <warehouse>/compare/models, so "latest" stays the pipeline's), the neighbours' precision@5
computed in memory (no table written), and shopper-photo queries. The table is then read back
from those runs (`compare.table`) into <warehouse>/reports/compare/.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from .. import tracking
from ..compare.grid import Combination, combinations
from ..compare.measures import neighbour_precision, photo_queries, photo_sample
from ..compare.table import (
    PRECISION_K,
    comparison_table,
    markdown,
    neighbour_metric,
    write_comparison,
)
from ..config import Config, parse_size
from ..faults import crash_point
from ..features.backbones import WeightsUnavailable
from ..features.featurize import FeatureModelSpec, usable_embedding
from ..io.catalog import FEATURES, PRODUCTS
from ..tracking import Tracker
from .base import StepResult, catalog, step
from .classifier_steps import evaluate, train
from .feature_steps import current_features, feature_spec, featurize

log = logging.getLogger(__name__)


@step(reads=(PRODUCTS, FEATURES), writes=(), runs=(featurize, train, evaluate),
      settings=("compare", "neighbours.block_rows", "neighbours.broadcast_max_bytes",
                "tracking.enabled"))
def compare(spark: SparkSession, cfg: Config) -> StepResult:
    """Feature models side by side: each combination featurized, trained and evaluated alike."""
    if not cfg.tracking.enabled:
        raise RuntimeError("compare reads its table back from the MLflow runs of the "
                           "combinations: it needs tracking.enabled=true")
    c = cfg.compare
    combos = combinations(c.backbones, [parse_size(s) for s in c.sizes], c.precisions,
                          c.random_init)
    parent = tracking.active_run_id()
    tables = catalog(spark, cfg)
    photos = photo_sample(tables.read(PRODUCTS), c.photo_queries, c.photo_seed)
    statuses = {}
    for i, combo in enumerate(combos, 1):
        log.info("compare [%d/%d] %s", i, len(combos), combo.label)
        statuses[combo.label] = run_combination(spark, cfg, combo, parent, photos)
        log.info("compare [%d/%d] %s: %s", i, len(combos), combo.label, statuses[combo.label])
    table = comparison_table(Tracker(cfg).tagged_runs("lookbook.compare", parent))
    out = write_comparison(table, Path(cfg.reports_dir) / "compare")
    failed = [label for label, status in statuses.items() if status.startswith("failed")]
    if failed:
        raise RuntimeError(f"compare: {len(failed)} of {len(combos)} combinations failed "
                           f"({'; '.join(failed)}); the others' rows are in {out}")
    return StepResult(
        f"{len(combos)} combinations compared; table in {out / 'comparison.md'}",
        details=markdown(table), metrics={"combinations": len(combos)}, artefacts=[out])


def run_combination(spark: SparkSession, cfg: Config, combo: Combination, parent: str,
                    photos: pd.DataFrame) -> str:
    """One combination as a nested run tagged with the comparison's run; returns its status:
    "done", "weights unreachable: ..." (its row says so) or "failed: ..."."""
    tracker = Tracker(combination_config(cfg, combo, "latest"))
    with tracker.run(f"compare: {combo.label}", nested=True, tags={"lookbook.compare": parent},
                     params=combo.params()) as run_id:
        combo_cfg = combination_config(cfg, combo, run_id)
        started = time.time()
        try:
            crash_point("compare.combination", combo.label)
            spec = feature_spec(spark, combo_cfg)
            result = evaluate_combination(spark, combo_cfg, spec, photos)
            status = "done"
        except WeightsUnavailable as exc:
            status = f"weights unreachable: {exc}"
            result = StepResult(status)
        except Exception as exc:  # one combination's failure must not lose the others
            log.error("compare %s failed:\n%s", combo.label, traceback.format_exc())
            status = f"failed: {type(exc).__name__}: {exc}"
            result = StepResult(status)
        tracker.record(result, time.time() - started,
                       tags={"lookbook.compare.status": status[:5000]})
    return status


def combination_config(cfg: Config, combo: Combination, model_run_id: str) -> Config:
    """The job's config with the combination's featurize settings; its model (the one its
    run trains) is kept apart from the pipeline's."""
    settings = combo.featurize_settings(cfg.featurize.backbone, cfg.featurize.layers)
    return dataclasses.replace(
        cfg, featurize=dataclasses.replace(cfg.featurize, **settings),
        model=dataclasses.replace(cfg.model, run_id=model_run_id,
                                  dir=str(Path(cfg.warehouse) / "compare" / "models")))


def evaluate_combination(spark: SparkSession, cfg: Config, spec: FeatureModelSpec,
                         photos: pd.DataFrame) -> StepResult:
    """The steps compare runs (featurize, train, evaluate) with `cfg` (the combination's),
    then neighbours P@5 and the photo queries; every step's metrics under its name."""
    results = {s.name: s(spark, cfg) for s in compare.runs}
    if not results[featurize.name].metrics.get("computed"):
        results[featurize.name].metrics["images_per_second"] = float("nan")  # all rows reused
    tables = catalog(spark, cfg)
    features = (current_features(tables, spec).filter(usable_embedding())
                .select("product_id", "embedding", "sha256").persist())
    n = cfg.neighbours
    metrics = {f"{name}.{k}": v for name, r in results.items() for k, v in r.metrics.items()}
    metrics |= neighbour_precision(features, tables.read(PRODUCTS).drop("image"), n.block_rows,
                                   n.broadcast_max_bytes)
    metrics |= photo_queries(features, spec, photos, cfg.compare.photo_seed)
    features.unpersist()
    params = {k: v for r in results.values() for k, v in r.params.items()}
    trained, evaluated = results[train.name], results[evaluate.name]
    return StepResult(
        f"{spec.backbone} {spec.height}x{spec.width} {spec.precision}: {evaluated.summary}, P@5 "
        f"{metrics[neighbour_metric(f'precision@{PRECISION_K}', 'articleType')]:.3f}",
        params=params, metrics=metrics, history=trained.history,
        artefacts=[*trained.artefacts, *evaluated.artefacts])
