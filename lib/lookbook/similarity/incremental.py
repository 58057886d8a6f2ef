"""A neighbours table brought up to date exactly, computing only what changed since the
inputs it was computed from (the nightly refresh)."""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame

from ..io.changes import changes_by_key
from .knn import blocks_of, changed_lists, lists_to_recompute, patched_lists, top_k_of_blocks


def neighbour_inputs(features: DataFrame, same: list[str]) -> DataFrame:
    """What neighbours computed from `features` (the usable rows of one feature model, with
    the products' `same` columns joined on) depend on, per product: product_id, sha256 and
    the `same` columns. `update_neighbours` compares the inputs of two versions."""
    return features.select("product_id", "sha256", *same)


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


def update_neighbours(old: DataFrame, features: DataFrame, before: DataFrame, *, k: int,
                      block_rows: int, broadcast_max_bytes: int, same: list[str],
                      exclude_same_image: bool = False) -> NeighboursUpdate:
    """The neighbours table brought up to date with `features`, exactly, from `old` (its
    lists) and `before` (the inputs `old` was computed from, see `neighbour_inputs`); the
    settings are `knn.nearest_neighbours`'.

    New and changed products, and unchanged ones whose list names a deleted or changed
    product, get their top-k against everything; every other unchanged product merges its
    list with its top-k among the new and changed products (`patched_lists`)."""
    changes = changes_by_key(before, features, {"changed": ["sha256", *same]}).persist()
    counts = {c: 0 for c in ("new", "changed", "deleted")}
    counts.update({r["change"]: r["count"] for r in changes.groupBy("change").count().collect()})
    arrived = features.join(changes.where("change != 'deleted'"), "product_id", "left_semi")
    redo = lists_to_recompute(old, changes).persist()
    counts["recomputed"] = redo.count()
    recompute = changes.select("product_id").unionByName(redo)
    fully = features.join(recompute, "product_id", "left_semi")
    # Every product's vectors are packed into blocks once: candidates of the recomputed
    # lists, queries of the patched ones.
    everything = blocks_of(features, block_rows, same).persist()
    cached, computed, paths = [changes, redo, everything], [], []
    if not fully.isEmpty():
        queries = blocks_of(fully, block_rows, same).persist()
        full, path = top_k_of_blocks(queries, everything, k, broadcast_max_bytes,
                                     exclude_same_image)
        computed.append(full)
        cached += [queries, full]
        paths.append(f"recomputed: {path}")
    if not arrived.isEmpty():
        newcomers = blocks_of(arrived, block_rows, same).persist()
        found, path = top_k_of_blocks(everything, newcomers, k, broadcast_max_bytes,
                                      exclude_same_image)
        challengers = found.join(recompute, "product_id", "left_anti")
        computed.append(patched_lists(old, challengers, k))
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
