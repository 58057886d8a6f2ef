"""Steps of the visual-similarity side: the neighbours table, its evaluation, near-duplicates,
and query by photo or by product."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..features.featurize import driver_feature_model, embed_batch, usable_embedding
from ..io.changes import changes_by_key
from ..io.images import read_image_file
from ..reports.gallery import gallery_queries, gallery_rows, plot_gallery
from ..reports.html import write_html
from ..similarity.knn import (
    blocks_of,
    changed_lists,
    lists_to_recompute,
    nearest_neighbours,
    patched_lists,
    top_k_of_blocks,
)
from ..similarity.query import most_similar
from ..similarity.relevance import relevance_metrics
from .base import (
    StepResult,
    catalog,
    input_versions,
    recorded_inputs,
    step,
    written_metrics,
    written_summary,
)
from .feature_steps import current_features, feature_spec, spec_params

# Which features a neighbours row came from.
SOURCE_COLUMNS = ["backbone", "layers", "weights", "height", "width", "precision"]


@step("neighbours")
def neighbours(spark: SparkSession, cfg: Config) -> StepResult:
    """Every product's exact top-k. When the table was computed with these settings from
    versions of products and features that can still be read, only what changed since is
    computed (`update_neighbours`); otherwise everything."""
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
    meta = {"lookbook.k": str(n.k), "lookbook.same": ",".join(n.same),
            "lookbook.exclude_same_image": str(n.exclude_same_image),
            **{f"lookbook.{k}": str(v) for k, v in spec.settings().items()},
            **input_versions(tables, "products", "features")}
    since = neighbours_since(tables, meta)
    started = time.time()
    if since is None:
        result, path = nearest_neighbours(features, n.k, n.block_rows, n.broadcast_max_bytes,
                                          n.same, n.exclude_same_image)
        table = with_sources(result, spec)
        version = tables.write("neighbours", table, metadata={**meta, "lookbook.path": path})
        counts = {"products": count}
    else:
        before = neighbour_inputs(tables, spec, n.same, since)
        update = update_neighbours(tables.read("neighbours"), features, before, cfg)
        path, counts = update.path, update.counts
        written = tables.merge("neighbours", with_sources(update.rows, spec), update.removed,
                               ("product_id",), {**meta, "lookbook.path": path})
        version = written.version
        update.release()
        result = None
    seconds = time.time() - started
    rows = tables.read("neighbours").count()
    if result is not None:
        result.unpersist()
    features.unpersist()
    skipped = (f"; {unusable:,} skipped: features not finite (NaN/inf) or all zeros, "
               f"run featurize again to recompute them" if unusable else "")
    what = (f"{count:,} products x top-{n.k}" if since is None else
            ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    committed = "" if version is not None else "; nothing committed"
    return StepResult(
        f"{what} ({path}) in {seconds:.1f} s{skipped}{committed}",
        details=(f"{rows:,} rows in {tables.path('neighbours')} (version {version}){skipped}\n"
                 + written_summary(tables.written)),
        params={**spec_params(spec), "path": path},
        metrics={"products": count, "rows": rows, "seconds_top_k": seconds,
                 "unusable_features": unusable, "incremental": int(since is not None),
                 **{f"changes.{k}": v for k, v in counts.items()},
                 **written_metrics(tables.written)},
        outputs={"neighbours": version} if version is not None else {})


def with_sources(result: DataFrame, spec) -> DataFrame:
    """Neighbours rows with the feature settings they were computed from."""
    for name in SOURCE_COLUMNS:
        result = result.withColumn(name, F.lit(spec.settings()[name]))
    return result


def neighbour_inputs(tables, spec, same: list[str], versions: dict[str, int] | None = None
                     ) -> DataFrame:
    """What the neighbours of a version of the tables depend on, per product: product_id,
    sha256 and the `same` columns of the usable feature rows of `spec`."""
    return (current_features(tables, spec, *same, versions=versions)
            .filter(usable_embedding()).select("product_id", "sha256", *same))


def neighbours_since(tables, meta: dict[str, str]) -> dict[str, int] | None:
    """The input versions the neighbours table was computed from, when it was computed with
    the same settings (`meta`) and both versions can still be read; None: compute all."""
    recorded = recorded_inputs(tables, "neighbours")
    settings = {k: v for k, v in meta.items() if not k.startswith("lookbook.input.")}
    if any(recorded.get(k) != v for k, v in settings.items()):
        return None
    versions = {}
    for name in ("products", "features"):
        version = recorded.get(f"lookbook.input.{name}")
        if version is None or not tables.readable(name, int(version)):
            return None
        versions[name] = int(version)
    return versions


@dataclass
class NeighboursUpdate:
    rows: DataFrame  # the new lists of every product whose list changed
    removed: DataFrame  # product_id of products whose rows leave without a replacement
    counts: dict[str, int]
    path: str
    cached: list[DataFrame]

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


def update_neighbours(old: DataFrame, features: DataFrame, before: DataFrame,
                      cfg: Config) -> NeighboursUpdate:
    """The neighbours table brought up to date with `features`, exactly, from `old` (its
    lists) and `before` (the inputs `old` was computed from, see `neighbour_inputs`).

    New and changed products, and unchanged ones whose list names a deleted or changed
    product, get their top-k against everything; every other unchanged product merges its
    list with its top-k among the new and changed products (`patched_lists`)."""
    n = cfg.neighbours
    changes = changes_by_key(before, features, {"changed": ["sha256", *n.same]}).persist()
    counts = {c: 0 for c in ("new", "changed", "deleted")}
    counts.update({r["change"]: r["count"] for r in changes.groupBy("change").count().collect()})
    arrived = features.join(changes.where("change != 'deleted'"), "product_id", "left_semi")
    redo = lists_to_recompute(old, changes).persist()
    counts["recomputed"] = redo.count()
    recompute = changes.select("product_id").unionByName(redo)
    fully = features.join(recompute, "product_id", "left_semi")
    # Every product's vectors are packed into blocks once: candidates of the recomputed
    # lists, queries of the patched ones.
    everything = blocks_of(features, n.block_rows, n.same).persist()
    cached, computed, paths = [changes, redo, everything], [], []
    if not fully.isEmpty():
        queries = blocks_of(fully, n.block_rows, n.same).persist()
        full, path = top_k_of_blocks(queries, everything, n.k, n.broadcast_max_bytes,
                                     n.exclude_same_image)
        computed.append(full)
        cached += [queries, full]
        paths.append(f"recomputed: {path}")
    if not arrived.isEmpty():
        newcomers = blocks_of(arrived, n.block_rows, n.same).persist()
        found, path = top_k_of_blocks(everything, newcomers, n.k, n.broadcast_max_bytes,
                                      n.exclude_same_image)
        challengers = found.join(recompute, "product_id", "left_anti")
        computed.append(patched_lists(old, challengers, n.k))
        cached += [newcomers, found]
        paths.append(f"patched: {path}")
    schema = "product_id long, rank int, neighbour_id long, score float"
    new_lists = (computed[0].unionByName(computed[1]) if len(computed) == 2 else
                 computed[0] if computed else features.sparkSession.createDataFrame([], schema))
    rows = changed_lists(new_lists, old).persist()
    cached.append(rows)
    counts["lists_changed"] = rows.select("product_id").distinct().count()
    # Deleted products, and recomputed ones left without any neighbour, lose their rows.
    removed = (changes.where("change = 'deleted'").select("product_id")
               .unionByName(fully.select("product_id").join(new_lists, "product_id", "left_anti")))
    path = "; ".join(paths) or "no change"
    return NeighboursUpdate(rows, removed, counts, path, cached)


@step("evaluate_neighbours")
def evaluate_neighbours(spark: SparkSession, cfg: Config) -> StepResult:
    n = cfg.neighbours
    tables = catalog(spark, cfg)
    table = tables.read("neighbours")
    products = tables.read("products")
    metrics = relevance_metrics(table, products.drop("image"), n.k)
    out = Path(cfg.reports_dir) / "neighbours"
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


@step("duplicates")
def duplicates(spark: SparkSession, cfg: Config) -> StepResult:
    """Distinct products whose similarity reaches the threshold, among each one's top-k."""
    n = cfg.neighbours
    tables = catalog(spark, cfg)
    table = tables.read("neighbours")
    products = tables.read("products")
    sha = products.select("product_id", "sha256")
    pairs = (table.where(F.col("score") >= n.duplicate_threshold)
             .select(F.least("product_id", "neighbour_id").alias("product_id"),
                     F.greatest("product_id", "neighbour_id").alias("other_id"), "score")
             .groupBy("product_id", "other_id").agg(F.max("score").alias("score"))
             .join(sha, "product_id")
             .join(sha.select(F.col("product_id").alias("other_id"),
                              F.col("sha256").alias("other_sha256")), "other_id")
             .select("product_id", "other_id", "score",
                     (F.col("sha256") == F.col("other_sha256")).alias("identical_bytes"))
             .persist())
    meta = {"lookbook.threshold": str(n.duplicate_threshold)}
    if tables.exists("duplicates"):
        # The pairs are cheap to derive; only the rows that differ are committed.
        version = tables.merge("duplicates", *tables.differences("duplicates", pairs),
                               metadata=meta).version
    else:
        version = tables.write("duplicates", pairs, metadata=meta)
    counts = pairs.groupBy("identical_bytes").count().toPandas()
    top = pairs.orderBy(F.desc("identical_bytes"), F.desc("score"), "product_id").limit(24).toPandas()
    info = (products.where(F.col("product_id").isin([int(i) for i in
                                                      pd.concat([top.product_id, top.other_id])]))
            .select("product_id", "display_name", "image").toPandas().set_index("product_id"))
    rows = [{"title": f"{'identical bytes' if r.identical_bytes else 'near duplicate'}\n"
                      f"{r.product_id}",
             "image": bytes(info.loc[r.product_id, "image"]),
             "neighbours": [(int(r.other_id), info.loc[r.other_id, "display_name"], r.score,
                             bytes(info.loc[r.other_id, "image"]))]}
            for r in top.itertuples()]
    out = Path(cfg.reports_dir) / "duplicates"
    gallery = plot_gallery(rows, out / "gallery.png") if rows else "no pairs"
    page = write_html(out / "index.html", "lookbook: near-duplicates", [
        (f"Pairs with similarity >= {n.duplicate_threshold} (among each product's top-{n.k})",
         counts), ("Most similar pairs, identical bytes first", gallery)])
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
                      outputs={"duplicates": version} if version is not None else {},
                      artefacts=[out])


@step("similar")
def similar(spark: SparkSession, cfg: Config) -> StepResult:
    """The k most similar catalogue products to a photo (`image=`) or a product (`product_id=`)."""
    q = cfg.similar
    if bool(q.image) == bool(q.product_id):
        raise ValueError("similar needs exactly one of image=PATH or product_id=N")
    tables = catalog(spark, cfg)
    products = tables.read("products")
    out = Path(cfg.reports_dir) / "similar"
    if q.product_id:
        query = products.where(F.col("product_id") == q.product_id).select("image").first()
        if query is None:
            raise ValueError(f"product {q.product_id} is not in the catalogue (table products)")
        found = (tables.read("neighbours")
                 .where(F.col("product_id") == q.product_id).where(F.col("rank") <= q.k)
                 .select("neighbour_id", "score").toPandas())
        if found.empty:
            raise ValueError(f"product {q.product_id} has no rows in the neighbours table (the "
                             f"table is older than the product?): run the neighbours job")
        image = query["image"]
        title, png = f"product {q.product_id}", out / f"product_{q.product_id}.png"
    else:
        image = read_image_file(q.image)
        spec = feature_spec(spark, cfg)
        embedded = embed_batch(driver_feature_model(spec), [image], spec)
        if embedded["error"][0]:
            raise ValueError(embedded["error"][0])
        found = most_similar(current_features(tables, spec), np.asarray(embedded["embedding"][0]),
                             q.k)
        if found.empty:
            raise RuntimeError(f"no features with the settings {spec.settings()}: run featurize")
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
    gallery = plot_gallery([{"title": f"query\n{title}", "image": bytes(image), "neighbours": [
        (int(r.neighbour_id), r.display_name, float(r.score), bytes(r.image))
        for r in table.itertuples()]}], png)
    shown = table.drop(columns="image").rename(columns={"neighbour_id": "product_id"})
    return StepResult(f"{len(shown)} products, gallery {gallery}",
                      details=f"similar to {title}:\n{shown.to_string(index=False)}{note}",
                      params={"query": q.image or f"product {q.product_id}", "k": q.k},
                      metrics={"best_score": float(shown["score"].max()) if len(shown) else 0.0},
                      artefacts=[gallery])

