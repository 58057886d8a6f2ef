"""Steps of the visual-similarity side: neighbours, their evaluation, near-duplicates and query
by image or product. Config in, library calls, tables and files out (see steps.py)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import report as rpt
from .config import Config
from .featurize import FeatureModelSpec, embed_batch, settings_match
from .images import inspect_image
from .neighbours import PAIR_SCHEMA, l2_normalise, nearest_neighbours, ranked
from .retrieval import gallery_queries, gallery_rows, plot_gallery, relevance_metrics
from .tables import read_table, table_exists, write_table

# Which features a neighbours row came from.
SOURCE_COLUMNS = ["backbone", "layers", "weights", "height", "width", "precision"]


def current_features(spark: SparkSession, cfg: Config, spec: FeatureModelSpec) -> DataFrame:
    """Feature rows of the configured model for products in the catalogue today."""
    if not table_exists(cfg.table_path("features")):
        raise RuntimeError("no features table: run the featurize job first")
    products = read_table(spark, cfg.table_path("products")).select(
        "product_id", *cfg.neighbours.same)
    return (read_table(spark, cfg.table_path("features")).filter(settings_match(spec))
            .join(products, "product_id"))


def neighbours(spark: SparkSession, cfg: Config) -> str:
    from .steps import feature_spec

    n = cfg.neighbours
    spec = feature_spec(spark, cfg)
    features = current_features(spark, cfg, spec).persist()
    count = features.count()
    if not count:
        raise RuntimeError(f"no features with the settings {spec.settings()}: run featurize "
                           f"with the same featurize.* config first")
    started = time.time()
    result, path = nearest_neighbours(
        features.select("product_id", "embedding", "sha256", *n.same), n.k, n.block_rows,
        n.broadcast_max_bytes, n.same, n.exclude_same_image)
    seconds = time.time() - started
    table = result
    for name in SOURCE_COLUMNS:
        table = table.withColumn(name, F.lit(spec.settings()[name]))
    meta = {"lookbook.job": "neighbours", "lookbook.path": path, "lookbook.k": str(n.k),
            "lookbook.same": ",".join(n.same), **{f"lookbook.{k}": str(v)
                                                 for k, v in spec.settings().items()}}
    version = write_table(table, cfg.table_path("neighbours"), metadata=meta)
    rows = result.count()
    result.unpersist()
    features.unpersist()
    print(f"neighbours: {count:,} products, top-{n.k} by cosine, {path}, {seconds:.1f} s; "
          f"{rows:,} rows in {cfg.table_path('neighbours')} (version {version})")
    return f"{count:,} products x top-{n.k} ({path}) in {seconds:.1f} s"


def evaluate_neighbours(spark: SparkSession, cfg: Config) -> str:
    n = cfg.neighbours
    table = read_table(spark, cfg.table_path("neighbours"))
    products = read_table(spark, cfg.table_path("products"))
    metrics = relevance_metrics(table, products.drop("image"), n.k)
    out = Path(cfg.reports_dir) / "neighbours"
    out.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(out / "metrics.csv", index=False)
    queries = gallery_queries(table, products, n.gallery_per_class)
    gallery = plot_gallery(gallery_rows(queries, table, products), out / "gallery.png")
    shown = metrics.round(4)
    page = rpt.write_html(out / "index.html", "lookbook: visual neighbours", [
        (f"Relevance of the top-{n.k} (random baselines beside)", shown),
        ("Neighbours of sample products of every class, and the best and worst", gallery),
    ])
    print(f"evaluate_neighbours:\n{shown.to_string(index=False)}\nreport: {page}")
    strict = metrics.set_index("relevance").loc["articleType+baseColour+usage"]
    return (f"P@{n.k} articleType {metrics.iloc[0][f'precision@{n.k}']:.3f}, "
            f"articleType+baseColour+usage {strict[f'precision@{n.k}']:.3f}")


def duplicates(spark: SparkSession, cfg: Config) -> str:
    """Distinct products whose similarity reaches the threshold, among each one's top-k."""
    n = cfg.neighbours
    table = read_table(spark, cfg.table_path("neighbours"))
    products = read_table(spark, cfg.table_path("products"))
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
    write_table(pairs, cfg.table_path("duplicates"),
                metadata={"lookbook.job": "duplicates",
                          "lookbook.threshold": str(n.duplicate_threshold)})
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
    page = rpt.write_html(out / "index.html", "lookbook: near-duplicates", [
        (f"Pairs with similarity >= {n.duplicate_threshold} (among each product's top-{n.k})",
         counts), ("Most similar pairs, identical bytes first", gallery)])
    total = int(counts["count"].sum()) if len(counts) else 0
    identical = int(counts.loc[counts.identical_bytes == True, "count"].sum()) if len(counts) else 0  # noqa: E712
    pairs.unpersist()
    print(f"duplicates: {total:,} pairs >= {n.duplicate_threshold}, {identical:,} with identical "
          f"bytes; report: {page}")
    return f"{total:,} pairs, {identical:,} identical bytes"


def similar(spark: SparkSession, cfg: Config) -> str:
    """The k most similar catalogue products to a photo (`image=`) or a product (`product_id=`)."""
    q = cfg.similar
    if bool(q.image) == bool(q.product_id):
        raise ValueError("similar needs exactly one of image=PATH or product_id=N")
    products = read_table(spark, cfg.table_path("products"))
    out = Path(cfg.reports_dir) / "similar"
    if q.product_id:
        found = (read_table(spark, cfg.table_path("neighbours"))
                 .where(F.col("product_id") == q.product_id).where(F.col("rank") <= q.k)
                 .select("neighbour_id", "score").toPandas())
        if found.empty:
            raise ValueError(f"product {q.product_id} has no neighbours: not in the catalogue, "
                             f"or run the neighbours job")
        image = products.where(F.col("product_id") == q.product_id).first()["image"]
        title, png = f"product {q.product_id}", out / f"product_{q.product_id}.png"
    else:
        image = read_query_image(q.image)
        found = similar_to_image(spark, cfg, image, q.k)
        title, png = Path(q.image).name, out / f"{Path(q.image).stem}.png"
    info = (products.where(F.col("product_id").isin([int(i) for i in found.neighbour_id]))
            .select(F.col("product_id").alias("neighbour_id"), "display_name",
                    "master_category", "article_type", "image").toPandas())
    table = found.merge(info, on="neighbour_id").sort_values(["score", "neighbour_id"],
                                                            ascending=[False, True])
    gallery = plot_gallery([{"title": f"query\n{title}", "image": bytes(image), "neighbours": [
        (int(r.neighbour_id), r.display_name, float(r.score), bytes(r.image))
        for r in table.itertuples()]}], png)
    shown = table.drop(columns="image").rename(columns={"neighbour_id": "product_id"})
    print(f"similar to {title}:\n{shown.to_string(index=False)}\ngallery: {gallery}")
    return f"{len(shown)} products, gallery {gallery}"


def read_query_image(path: str) -> bytes:
    """The photo's bytes, or a clear error when it is missing or not an image."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = file.read_bytes()
    facts = inspect_image(data, 50_000_000)
    if facts.error:
        raise ValueError(f"{path} is not a usable image: {facts.error}")
    return data


def similar_to_image(spark: SparkSession, cfg: Config, image: bytes, k: int) -> pd.DataFrame:
    """Featurise `image` exactly as the features table was made, then scan the features for
    its k best (neighbour_id, score): each partition keeps its own top k, the driver merges."""
    from .steps import build_feature_model_of, feature_spec

    spec = feature_spec(spark, cfg)
    embedded = embed_batch(build_feature_model_of(spec), [image], spec)
    if embedded["error"][0]:
        raise ValueError(embedded["error"][0])
    query = l2_normalise(np.asarray(embedded["embedding"][0])[None, :])[0]
    features = current_features(spark, cfg, spec).select("product_id", "embedding")

    def scan(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            vectors = l2_normalise(np.stack(batch["embedding"].to_numpy()))
            scores = vectors @ query
            best = ranked(pd.DataFrame({"product_id": 0, "neighbour_id": batch["product_id"],
                                        "score": scores.astype("float32")})).head(k)
            yield best.drop(columns="rank")

    found = features.mapInPandas(scan, PAIR_SCHEMA).toPandas()
    if found.empty:
        raise RuntimeError(f"no features with the settings {spec.settings()}: run featurize")
    return ranked(found).head(k)[["neighbour_id", "score"]]
