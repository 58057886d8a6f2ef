"""Steps of the visual-similarity side: the neighbours table, its evaluation, near-duplicates,
and query by photo or by product."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config, NeighboursSettings, SimilarSettings
from ..features.featurize import (
    FeatureModelSpec,
    driver_feature_model,
    embed_batch,
    usable_embedding,
)
from ..io.catalog import DUPLICATES, FEATURES, NEIGHBOURS, PRODUCTS, Catalog, Table
from ..io.images import read_image_file
from ..reports.gallery import gallery_queries, gallery_row, gallery_rows, plot_gallery
from ..reports.html import write_html
from ..similarity.duplicates import duplicate_pairs
from ..similarity.incremental import neighbour_inputs, update_neighbours
from ..similarity.knn import nearest_neighbours
from ..similarity.query import most_similar
from ..similarity.relevance import relevance_metrics
from .base import StepResult, catalog, step, written_metrics, written_summary
from .feature_steps import current_features, feature_spec, spec_params

# Which features a neighbours row came from.
SOURCE_COLUMNS = ["backbone", "layers", "weights", "height", "width", "precision"]


@step(reads=(PRODUCTS, FEATURES), writes=(NEIGHBOURS,),
      settings=("neighbours", "featurize", "tensorflow"))
def neighbours(spark: SparkSession, cfg: Config) -> StepResult:
    """Every product's exact top-k. When the table was computed with these settings from
    versions of products and features that can still be read, only what changed since is
    computed (`similarity.incremental`); otherwise everything."""
    n = cfg.neighbours
    tables = catalog(spark, cfg)
    spec = feature_spec(spark, cfg)
    found = current_features(tables, spec, *n.same)
    # Defence against tables written before featurize rejected them: one NaN vector would
    # make a whole block's scores NaN, an all-zero one has no direction.
    features = found.filter(usable_embedding()).select(
        "product_id", "embedding", "sha256", *n.same).persist()
    count = features.count()
    unusable = found.count() - count
    if not count:
        raise RuntimeError(f"no usable features with the settings {spec.settings()}: run "
                           f"featurize with the same featurize.* config first")
    inputs = neighbours.inputs(tables, neighbour_settings(n, spec))
    since = inputs.since_all()
    started = time.time()
    if since is None:
        version, path = all_neighbours(tables, features, spec, n, inputs.current())
        counts = {PRODUCTS: count}
    else:
        version, path, counts = updated_neighbours(tables, features, spec, n, since,
                                                   inputs.current())
    seconds = time.time() - started
    features.unpersist()
    return neighbours_result(tables, spec, n, count, unusable, since is not None, version,
                             path, counts, seconds)


def neighbour_settings(n: NeighboursSettings, spec: FeatureModelSpec) -> dict[str, str]:
    """Commit metadata: what the rows depend on besides the input tables."""
    return {"lookbook.k": str(n.k), "lookbook.same": ",".join(n.same),
            "lookbook.exclude_same_image": str(n.exclude_same_image),
            **{f"lookbook.{k}": str(v) for k, v in spec.settings().items()}}


def all_neighbours(tables: Catalog, features: DataFrame, spec: FeatureModelSpec,
                   n: NeighboursSettings, meta: dict[str, str]) -> tuple[int, str]:
    """Every product's top-k, the table overwritten: (version, path)."""
    result, path = nearest_neighbours(features, n.k, n.block_rows, n.broadcast_max_bytes,
                                      n.same, n.exclude_same_image)
    version = tables.write(NEIGHBOURS, with_sources(result, spec),
                           metadata={**meta, "lookbook.path": path})
    result.unpersist()
    return version, path


def updated_neighbours(tables: Catalog, features: DataFrame, spec: FeatureModelSpec,
                       n: NeighboursSettings, since: dict[Table, int], meta: dict[str, str]
                       ) -> tuple[int | None, str, dict]:
    """The lists that changed since the input versions `since`, merged into the table:
    (version, or None when nothing changed; path; counts)."""
    before = neighbour_inputs(usable_features(tables, spec, n.same, since), n.same)
    update = update_neighbours(tables.read(NEIGHBOURS), features, before, k=n.k,
                               block_rows=n.block_rows,
                               broadcast_max_bytes=n.broadcast_max_bytes, same=n.same,
                               exclude_same_image=n.exclude_same_image)
    written = tables.merge(NEIGHBOURS, with_sources(update.rows, spec), update.removed,
                           ("product_id",), {**meta, "lookbook.path": update.path})
    update.release()
    return written.version, update.path, update.counts


def usable_features(tables: Catalog, spec: FeatureModelSpec, same: list[str],
                    versions: dict[Table, int] | None = None) -> DataFrame:
    """The feature rows of `spec` neighbours are computed from (today's, or at `versions`)."""
    return current_features(tables, spec, *same, versions=versions).filter(usable_embedding())


def neighbours_result(tables: Catalog, spec: FeatureModelSpec, n: NeighboursSettings,
                      count: int, unusable: int, incremental: bool, version: int | None,
                      path: str, counts: dict, seconds: float) -> StepResult:
    rows = tables.read(NEIGHBOURS).count()
    skipped = (f"; {unusable:,} skipped: features not finite (NaN/inf) or all zeros, "
               f"run featurize again to recompute them" if unusable else "")
    what = (", ".join(f"{v:,} {k}" for k, v in counts.items()) if incremental
            else f"{count:,} products x top-{n.k}")
    committed = "" if version is not None else "; nothing committed"
    return StepResult(
        f"{what} ({path}) in {seconds:.1f} s{skipped}{committed}",
        details=(f"{rows:,} rows in {tables.path(NEIGHBOURS)} (version {version}){skipped}\n"
                 + written_summary(tables.written)),
        params={**spec_params(spec), "path": path},
        metrics={PRODUCTS: count, "rows": rows, "seconds_top_k": seconds,
                 "unusable_features": unusable, "incremental": int(incremental),
                 **{f"changes.{k}": v for k, v in counts.items()},
                 **written_metrics(tables.written)},
        outputs={NEIGHBOURS: version} if version is not None else {})


def with_sources(result: DataFrame, spec) -> DataFrame:
    """Neighbours rows with the feature settings they were computed from."""
    for name in SOURCE_COLUMNS:
        result = result.withColumn(name, F.lit(spec.settings()[name]))
    return result


@step(reads=(NEIGHBOURS, PRODUCTS), writes=(),
      settings=("neighbours.k", "neighbours.gallery_per_class"))
def evaluate_neighbours(spark: SparkSession, cfg: Config) -> StepResult:
    """The neighbours table's relevance (P@k, R@k, mAP against random baselines) and a gallery."""
    n = cfg.neighbours
    tables = catalog(spark, cfg)
    table = tables.read(NEIGHBOURS)
    products = tables.read(PRODUCTS)
    metrics = relevance_metrics(table, products.drop("image"), n.k)
    out = Path(cfg.reports_dir) / NEIGHBOURS  # the report on the table
    out.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(out / "metrics.csv", index=False)
    queries = gallery_queries(table, products, n.gallery_per_class)
    gallery = plot_gallery(gallery_rows(queries, table, products), out / "gallery.png")
    shown = metrics.round(4)
    stale = stale_note(table, products)
    page = write_html(out / "index.html", "lookbook: visual neighbours", [
        *([("Note: stale neighbours table", stale)] if stale else []),
        (f"Relevance of the top-{n.k} (random baselines beside)", shown),
        ("Neighbours of sample products of every class, and the best and worst", gallery),
    ])
    strict = metrics.set_index("relevance").loc["articleType+baseColour+usage"]
    scores = {f"{column}.{row['relevance']}": float(row[column])
              for _, row in metrics.iterrows() for column in metrics.columns
              if column not in ("relevance", "queries", "singletons")}
    return StepResult(
        f"P@{n.k} articleType {metrics.iloc[0][f'precision@{n.k}']:.3f}, "
        f"articleType+baseColour+usage {strict[f'precision@{n.k}']:.3f}",
        details=f"{shown.to_string(index=False)}\nreport: {page}" + (f"\n{stale}" if stale else ""),
        metrics=scores, artefacts=[out])


def stale_note(neighbours: DataFrame, products: DataFrame) -> str:
    """A line saying how many neighbours rows name products no longer in `products` (the
    table is older than the catalogue; reports leave those out), or "" when none do."""
    ids = products.select("product_id")
    known = (neighbours.join(ids, "product_id", "left_semi")
             .join(ids.withColumnRenamed("product_id", "neighbour_id"), "neighbour_id",
                   "left_semi"))
    gone = neighbours.count() - known.count()
    return (f"{gone:,} neighbours rows name products no longer in products and are left out: "
            f"run the neighbours job again" if gone else "")


@step(reads=(NEIGHBOURS, PRODUCTS), writes=(DUPLICATES,),
      settings=("neighbours.duplicate_threshold", "neighbours.k"))
def duplicates(spark: SparkSession, cfg: Config) -> StepResult:
    """Distinct products whose similarity reaches the threshold, among each one's top-k."""
    n = cfg.neighbours
    tables = catalog(spark, cfg)
    products = tables.read(PRODUCTS)
    pairs = duplicate_pairs(tables.read(NEIGHBOURS), products, n.duplicate_threshold).persist()
    meta = {"lookbook.threshold": str(n.duplicate_threshold)}
    if tables.exists(DUPLICATES):
        # The pairs are cheap to derive; only the rows that differ are committed.
        version = tables.merge(DUPLICATES, *tables.differences(DUPLICATES, pairs),
                               metadata=meta).version
    else:
        version = tables.write(DUPLICATES, pairs, metadata=meta)
    counts = pairs.groupBy("identical_bytes").count().toPandas()
    page = duplicates_report(pairs, products, counts, n, Path(cfg.reports_dir) / DUPLICATES)
    total = int(counts["count"].sum()) if len(counts) else 0
    identical = int(counts.loc[counts["identical_bytes"].astype(bool), "count"].sum()) \
        if len(counts) else 0
    pairs.unpersist()
    return StepResult(f"{total:,} pairs, {identical:,} identical bytes"
                      + ("; nothing committed" if version is None else ""),
                      details=f"report: {page}",
                      params={"threshold": n.duplicate_threshold},
                      metrics={"pairs": total, "identical_bytes": identical,
                               **written_metrics(tables.written)},
                      outputs={DUPLICATES: version} if version is not None else {},
                      artefacts=[page.parent])


def duplicates_report(pairs: DataFrame, products: DataFrame, counts: pd.DataFrame,
                      n: NeighboursSettings, out: Path) -> Path:
    """reports/duplicates: pairs counted, and the most similar ones side by side."""
    top = (pairs.orderBy(F.desc("identical_bytes"), F.desc("score"), "product_id").limit(24)
           .toPandas())
    info = (products.where(F.col("product_id").isin([int(i) for i in
                                                      pd.concat([top.product_id, top.other_id])]))
            .select("product_id", "display_name", "image").toPandas().set_index("product_id"))
    rows = [gallery_row(f"{'identical bytes' if r.identical_bytes else 'near duplicate'}\n"
                        f"{r.product_id}", bytes(info.loc[r.product_id, "image"]),
                        [(int(r.other_id), info.loc[r.other_id, "display_name"], r.score,
                          bytes(info.loc[r.other_id, "image"]))])
            for r in top.itertuples()]
    gallery = plot_gallery(rows, out / "gallery.png") if rows else "no pairs"
    return write_html(out / "index.html", "lookbook: near-duplicates", [
        (f"Pairs with similarity >= {n.duplicate_threshold} (among each product's top-{n.k})",
         counts), ("Most similar pairs, identical bytes first", gallery)])


@step(reads=(PRODUCTS, NEIGHBOURS, FEATURES), writes=(),
      settings=("similar", "featurize", "tensorflow"))
def similar(spark: SparkSession, cfg: Config) -> StepResult:
    """The k most similar catalogue products to a photo (`image=`) or a product (`product_id=`)."""
    q = cfg.similar
    if bool(q.image) == bool(q.product_id):
        raise ValueError("similar needs exactly one of image=PATH or product_id=N")
    tables = catalog(spark, cfg)
    products = tables.read(PRODUCTS)
    out = Path(cfg.reports_dir) / "similar"
    if q.product_id:
        found, image = similar_to_product(tables, products, q)
        title, png = f"product {q.product_id}", out / f"product_{q.product_id}.png"
    else:
        found, image = similar_to_photo(spark, cfg, tables)
        title, png = Path(q.image).name, out / f"{Path(q.image).stem}.png"
    info = (products.where(F.col("product_id").isin([int(i) for i in found.neighbour_id]))
            .select(F.col("product_id").alias("neighbour_id"), "display_name",
                    "master_category", "article_type", "image").toPandas())
    table = found.merge(info, on="neighbour_id").sort_values(["score", "neighbour_id"],
                                                            ascending=[False, True])
    gone = len(found) - len(table)
    note = (f"\nnote: {gone} of the neighbours are no longer in products and are left out: "
            f"the neighbours table is older than the catalogue, run the neighbours job"
            if gone else "")
    gallery = plot_gallery([gallery_row(f"query\n{title}", bytes(image), [
        (int(r.neighbour_id), r.display_name, float(r.score), bytes(r.image))
        for r in table.itertuples()])], png)
    shown = table.drop(columns="image").rename(columns={"neighbour_id": "product_id"})
    return StepResult(f"{len(shown)} products, gallery {gallery}",
                      details=f"similar to {title}:\n{shown.to_string(index=False)}{note}",
                      params={"query": q.image or f"product {q.product_id}", "k": q.k},
                      metrics={"best_score": float(shown["score"].max()) if len(shown) else 0.0},
                      artefacts=[gallery])


def similar_to_product(tables: Catalog, products: DataFrame, q: SimilarSettings
                       ) -> tuple[pd.DataFrame, bytes]:
    """(neighbour_id, score) of the product's rows in the neighbours table, and its image."""
    query = products.where(F.col("product_id") == q.product_id).select("image").first()
    if query is None:
        raise ValueError(f"product {q.product_id} is not in the catalogue (table products)")
    found = (tables.read(NEIGHBOURS)
             .where(F.col("product_id") == q.product_id).where(F.col("rank") <= q.k)
             .select("neighbour_id", "score").toPandas())
    if found.empty:
        raise ValueError(f"product {q.product_id} has no rows in the neighbours table (the "
                         f"table is older than the product?): run the neighbours job")
    return found, query["image"]


def similar_to_photo(spark: SparkSession, cfg: Config, tables: Catalog
                     ) -> tuple[pd.DataFrame, bytes]:
    """(neighbour_id, score) of the k products whose features are most like the photo's, and
    the photo."""
    image = read_image_file(cfg.similar.image)
    spec = feature_spec(spark, cfg)
    embedded = embed_batch(driver_feature_model(spec), [image], spec)
    if embedded["error"][0]:
        raise ValueError(embedded["error"][0])
    found = most_similar(current_features(tables, spec), np.asarray(embedded["embedding"][0]),
                         cfg.similar.k)
    if found.empty:
        raise RuntimeError(f"no features with the settings {spec.settings()}: run featurize")
    return found, image
