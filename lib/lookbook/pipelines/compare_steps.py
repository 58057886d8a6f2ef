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

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import tracking
from ..compare.grid import Combination, combinations
from ..compare.photos import KINDS, altered_photo, own_product_ranks, rank_metrics
from ..compare.table import (
    PRECISION_K,
    comparison_table,
    markdown,
    neighbour_metric,
    plot_comparison,
)
from ..config import Config, parse_size
from ..faults import crash_point
from ..features.backbones import WeightsUnavailable
from ..features.featurize import FeatureModelSpec, driver_feature_model, run_on_images, usable_embedding
from ..io.catalog import Catalog
from ..reports.html import write_html
from ..similarity.knn import nearest_neighbours
from ..similarity.relevance import relevance_metrics
from ..tracking import Tracker
from .base import STEPS, StepResult, catalog, step
from .feature_steps import current_features, feature_spec

log = logging.getLogger(__name__)


@step("compare")
def compare(spark: SparkSession, cfg: Config) -> StepResult:
    if not cfg.tracking.enabled:
        raise RuntimeError("compare reads its table back from the MLflow runs of the "
                           "combinations: it needs tracking.enabled=true")
    c = cfg.compare
    combos = combinations(c.backbones, [parse_size(s) for s in c.sizes], c.precisions,
                          c.random_init)
    parent = tracking.active_run_id()
    tables = catalog(spark, cfg)
    photos = photo_sample(tables, cfg.compare.photo_queries, cfg.compare.photo_seed)
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
    """featurize, train, evaluate with `cfg` (the combination's), then neighbours P@5 and the
    photo queries; every step's metrics under its name."""
    results = {name: STEPS[name](spark, cfg) for name in ("featurize", "train", "evaluate")}
    if not results["featurize"].metrics.get("computed"):
        results["featurize"].metrics["images_per_second"] = float("nan")  # all rows reused
    tables = catalog(spark, cfg)
    features = (current_features(tables, spec).filter(usable_embedding())
                .select("product_id", "embedding", "sha256").persist())
    metrics = {f"{name}.{k}": v for name, r in results.items() for k, v in r.metrics.items()}
    metrics |= neighbour_precision(features, tables.read("products").drop("image"), cfg)
    metrics |= photo_queries(features, spec, photos, cfg.compare.photo_seed)
    features.unpersist()
    params = {k: v for r in results.values() for k, v in r.params.items()}
    evaluated = results["evaluate"].summary
    return StepResult(
        f"{spec.backbone} {spec.height}x{spec.width} {spec.precision}: {evaluated}, P@5 "
        f"{metrics[neighbour_metric(f'precision@{PRECISION_K}', 'articleType')]:.3f}",
        params=params, metrics=metrics, history=results["train"].history,
        artefacts=[*results["train"].artefacts, *results["evaluate"].artefacts])


def neighbour_precision(features: DataFrame, products: DataFrame, cfg: Config) -> dict[str, float]:
    """precision@5 (and recall, mAP) of every product's exact top-5 by `features` (usable
    rows of one feature model), per relevance definition, computed in memory as the
    neighbours and evaluate_neighbours steps would (no table written)."""
    n = cfg.neighbours
    result, _ = nearest_neighbours(features, PRECISION_K, n.block_rows, n.broadcast_max_bytes)
    scores = relevance_metrics(result, products, PRECISION_K)
    result.unpersist()
    return {neighbour_metric(column, row["relevance"]): float(row[column])
            for _, row in scores.iterrows() for column in scores.columns
            if column not in ("relevance", "queries", "singletons")}


def photo_sample(tables: Catalog, n: int, seed: int) -> pd.DataFrame:
    """`n` products (product_id, image) chosen by a seeded hash of their id: the same for
    every combination."""
    return (tables.read("products").select("product_id", "image")
            .orderBy(F.xxhash64(F.lit(seed), "product_id"), "product_id").limit(n).toPandas())


def photo_queries(features: DataFrame, spec: FeatureModelSpec, photos: pd.DataFrame,
                  seed: int) -> dict[str, float]:
    """Each sampled product's image altered as a shopper's photo (each alteration alone and
    all at once, `compare.photos`), featurized on the driver and ranked against the whole
    catalogue's features: the share found at rank 1 and in the top 5; also the driver's
    images/s over these photos (the same images for every combination) and the dimension.
    `features`: the catalogue's usable rows of `spec`."""
    catalogue = features.select("product_id", "embedding").toPandas()
    ids = catalogue["product_id"].to_numpy()
    vectors = np.stack(catalogue["embedding"].to_numpy()).astype(np.float32)
    photos = photos[photos["product_id"].isin(ids)]
    model = driver_feature_model(spec)
    metrics = {"dimension": float(vectors.shape[1]), "photo.queries": float(len(photos))}
    if photos.empty:
        return metrics
    warm_up = [bytes(b) for b in photos["image"][:spec.batch_size]]
    run_on_images(model, warm_up, spec.height, spec.width, spec.batch_size, "compare")
    seconds, images = 0.0, 0
    for kind in KINDS:
        altered = [altered_photo(bytes(b), int(pid), seed, kind)
                   for pid, b in zip(photos["product_id"], photos["image"])]
        started = time.perf_counter()
        outputs, _ = run_on_images(model, altered, spec.height, spec.width, spec.batch_size,
                                   "compare")
        seconds += time.perf_counter() - started
        images += len(altered)
        good = [i for i, o in enumerate(outputs) if o is not None]
        ranks = own_product_ranks(np.stack([outputs[i] for i in good]),
                                  photos["product_id"].to_numpy()[good], vectors, ids)
        metrics |= rank_metrics(kind, ranks)
        metrics[f"photo.{kind}.failed"] = float(len(altered) - len(good))
    metrics["photo.images_per_second"] = images / seconds
    return metrics


def write_comparison(table: pd.DataFrame, out: Path) -> Path:
    """comparison.csv (every column), comparison.md, comparison.png and index.html."""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown(table))
    chart = plot_comparison(table, out / "comparison.png")
    photo_columns = ["backbone", "weights", "size", "precision",
                     *[c for c in table.columns if c.startswith("photo.")]]
    recall_columns = ["backbone", "weights", "size", "precision",
                      *[c for c in table.columns if c.startswith("recall.")]]
    write_html(out / "index.html", "lookbook: feature models compared", [
        ("Combinations (same split, head and training budget)",
         table.drop(columns=[c for c in table.columns if c.startswith(("photo.", "recall."))])),
        ("Accuracy, neighbours and photo queries against featurize speed", chart),
        ("Shopper-photo queries by alteration (share at rank 1 / in the top 5)",
         table[photo_columns].round(4)),
        ("Recall per class (test part)", table[recall_columns].round(4)),
    ])
    return out
