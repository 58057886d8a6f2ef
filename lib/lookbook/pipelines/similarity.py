"""Steps of the visual-similarity side: the neighbours table, its evaluation, near-duplicates,
and query by photo or by product."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..features.featurize import driver_feature_model, embed_batch, usable_embedding
from ..io.images import read_image_file
from ..reports.gallery import gallery_queries, gallery_rows, plot_gallery
from ..reports.html import write_html
from ..similarity.knn import nearest_neighbours
from ..similarity.query import most_similar
from ..similarity.relevance import relevance_metrics
from .base import StepResult, catalog, step
from .features import current_features, feature_spec, spec_params

# Which features a neighbours row came from.
SOURCE_COLUMNS = ["backbone", "layers", "weights", "height", "width", "precision"]


@step("neighbours")
def neighbours(spark: SparkSession, cfg: Config) -> StepResult:
    n = cfg.neighbours
    tables = catalog(spark, cfg)
    spec = feature_spec(spark, cfg)
    found = current_features(tables, spec, *n.same)
    # Defence against tables written before featurize rejected them: one NaN vector would
    # make a whole block's scores NaN, an all-zero one has no direction.
    features = found.filter(usable_embedding()).persist()
    count = features.count()
    unusable = found.count() - count
    if not count:
        raise RuntimeError(f"no usable features with the settings {spec.settings()}: run "
                           f"featurize with the same featurize.* config first")
    started = time.time()
    result, path = nearest_neighbours(
        features.select("product_id", "embedding", "sha256", *n.same), n.k, n.block_rows,
        n.broadcast_max_bytes, n.same, n.exclude_same_image)
    seconds = time.time() - started
    table = result
    for name in SOURCE_COLUMNS:
        table = table.withColumn(name, F.lit(spec.settings()[name]))
    meta = {"lookbook.path": path, "lookbook.k": str(n.k), "lookbook.same": ",".join(n.same),
            **{f"lookbook.{k}": str(v) for k, v in spec.settings().items()}}
    version = tables.write("neighbours", table, metadata=meta)
    rows = result.count()
    result.unpersist()
    features.unpersist()
    skipped = (f"; {unusable:,} skipped: features not finite (NaN/inf) or all zeros, "
               f"run featurize again to recompute them" if unusable else "")
    return StepResult(
        f"{count:,} products x top-{n.k} ({path}) in {seconds:.1f} s{skipped}",
        details=f"{rows:,} rows in {tables.path('neighbours')} (version {version}){skipped}",
        params={**spec_params(spec), "path": path},
        metrics={"products": count, "rows": rows, "seconds_top_k": seconds,
                 "unusable_features": unusable},
        outputs={"neighbours": version})


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
    version = tables.write("duplicates", pairs,
                           metadata={"lookbook.threshold": str(n.duplicate_threshold)})
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
    return StepResult(f"{total:,} pairs, {identical:,} identical bytes",
                      details=f"report: {page}",
                      params={"threshold": n.duplicate_threshold},
                      metrics={"pairs": total, "identical_bytes": identical},
                      outputs={"duplicates": version}, artefacts=[out])


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

