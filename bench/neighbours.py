"""Neighbours benchmark: the Spark job's exact top-5 against FAISS `IndexFlatIP` (exact inner
product on L2-normalised vectors), same vectors, same cores, in one run.

Sets: the real features table of a warehouse (--warehouse, after featurize), and synthetic
random vectors (--synthetic 50000 200000, dimension --dim 512).
The Spark session is warmed first on 2,000 of the vectors (as in a pipeline, where earlier steps
started the JVM and the Python workers), and the vectors are cached in Spark before the clock
starts (as the neighbours step has them, and FAISS its arrays). Prints for each: seconds of
each, ratio Spark / FAISS (target <= 1.3), peak memory of each
(FAISS: this process's peak RSS growth while searching; Spark: peak RSS of the JVM and Python
workers, sampled every 0.2 s), and recall of the job's top-5 against FAISS's, counting a
different id at the same score (a tie) as found.

    .venv/bin/python bench/neighbours.py --warehouse /tmp/wh --synthetic 50000 200000
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from machine import cpu_line  # bench/machine.py

from lookbook.cli import configure_logging  # noqa: E402
from lookbook.config import FeaturizeSettings, NeighboursSettings, SparkSettings, TensorflowSettings  # noqa: E402
from lookbook.pipelines.feature_steps import configured_layers_label  # noqa: E402
from lookbook.session import build_spark  # noqa: E402
from lookbook.similarity.knn import l2_normalise, nearest_neighbours  # noqa: E402

K = 5


class PeakRss:
    """Peak resident memory of a set of processes (this one's children: the JVM, workers)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_of(p) for p in descendants(os.getpid())))
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()


def descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(") ")[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return children + [d for c in children for d in descendants(c)]


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def faiss_top_k(ids: np.ndarray, vectors: np.ndarray) -> tuple[pd.DataFrame, float, int]:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count())
    unit = l2_normalise(vectors)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    scores, found = index.search(unit, K + 1)  # +1: each vector finds itself
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    rows = []
    for q in range(len(ids)):
        keep = [(ids[j], s) for j, s in zip(found[q], scores[q]) if j != q][:K]
        rows += [(ids[q], r + 1, n, s) for r, (n, s) in enumerate(keep)]
    return pd.DataFrame(rows, columns=["product_id", "rank", "neighbour_id", "score"]), seconds, peak


def recall_up_to_ties(job: pd.DataFrame, reference: pd.DataFrame, tolerance: float = 1e-5) -> float:
    """Share of FAISS's top-5 that the job found, where a different id at the reference's score
    (within float32 rounding) counts: such ties may be ordered either way."""
    mine = {pid: g for pid, g in job.groupby("product_id")}
    hits = total = 0
    for pid, ref in reference.groupby("product_id"):
        got = mine.get(pid)
        total += len(ref)
        if got is None:
            continue
        got_ids = set(got["neighbour_id"])
        kth = ref["score"].min()
        for n, s in zip(ref["neighbour_id"], ref["score"]):
            hits += n in got_ids or abs(s - kth) <= tolerance
    return hits / total


def run_set(spark, name: str, ids: np.ndarray, vectors: np.ndarray, block_rows: int,
            broadcast_max_bytes: int) -> None:
    from pyspark.sql import types as T

    print(f"\n== {name}: {len(ids):,} vectors x {vectors.shape[1]}", flush=True)
    reference, faiss_seconds, faiss_peak = faiss_top_k(ids, vectors)
    print(f"faiss IndexFlatIP : {faiss_seconds:8.1f} s, peak memory +{faiss_peak / 2**20:,.0f} MiB",
          flush=True)
    schema = T.StructType([T.StructField("product_id", T.LongType()),
                           T.StructField("embedding", T.ArrayType(T.FloatType())),
                           T.StructField("sha256", T.StringType())])
    path = Path(f"/tmp/bench-neighbours-{len(ids)}.parquet")
    pd.DataFrame({"product_id": ids, "embedding": list(vectors.astype("float32")),
                  "sha256": [str(i) for i in ids]}).to_parquet(path)
    # In memory before the clock starts, as the neighbours step has them (persisted and
    # counted before it times the top-k), and as FAISS has its arrays.
    features = spark.read.schema(schema).parquet(str(path)).persist()
    features.count()
    # Warm: the JVM's JIT and the Python workers, as in a pipeline where earlier steps ran.
    nearest_neighbours(features.limit(2000), K, block_rows, broadcast_max_bytes)[0].unpersist()
    with PeakRss() as rss:
        started = time.perf_counter()
        # To the result computed and cached, as a step has it before writing; FAISS's time,
        # too, ends with its arrays, before they become a table.
        result, how = nearest_neighbours(features, K, block_rows, broadcast_max_bytes)
        spark_seconds = time.perf_counter() - started
    job = result.toPandas()
    result.unpersist()
    features.unpersist()
    print(f"spark job         : {spark_seconds:8.1f} s, peak memory {rss.peak / 2**20:,.0f} MiB "
          f"(JVM + Python workers), {how}")
    block_bytes = block_rows * vectors.shape[1] * 4
    chunk_bytes = min(broadcast_max_bytes, len(ids) * vectors.shape[1] * 4)
    print(f"memory per task (bound): query block {block_bytes / 2**20:,.0f} MiB + candidate "
          f"chunk <= {max(chunk_bytes, block_bytes) / 2**20:,.0f} MiB + FAISS tile 16 MiB")
    print(f"ratio spark / faiss: {spark_seconds / faiss_seconds:.2f}  (target <= 1.3)")
    print(f"recall@{K} of the job against faiss (ties counted): "
          f"{recall_up_to_ties(job, reference):.6f}")


def main() -> None:
    configure_logging()
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse")
    parser.add_argument("--synthetic", type=int, nargs="*", default=[])
    parser.add_argument("--dim", type=int, default=512)
    defaults = NeighboursSettings()
    parser.add_argument("--block-rows", type=int, default=defaults.block_rows)
    parser.add_argument("--broadcast-max-bytes", type=int, default=defaults.broadcast_max_bytes)
    args = parser.parse_args()
    cores = os.cpu_count()
    spark = build_spark(SparkSettings(master=f"local[{cores}]", app_name="bench-neighbours",
                                      driver_memory="6g"), TensorflowSettings())
    if args.warehouse:
        from deltalake import DeltaTable

        features = DeltaTable(f"{args.warehouse}/features").to_pandas(
            columns=["product_id", "embedding", "layers"])
        features = features[features["layers"] == configured_layers_label(FeaturizeSettings())]
        run_set(spark, f"real features ({features['layers'].iloc[0]})",
                features["product_id"].to_numpy("int64"), np.stack(features["embedding"]),
                args.block_rows, args.broadcast_max_bytes)
    for n in args.synthetic:
        rng = np.random.default_rng(0)
        run_set(spark, "synthetic", np.arange(1, n + 1, dtype="int64"),
                rng.normal(size=(n, args.dim)).astype("float32"), args.block_rows,
                args.broadcast_max_bytes)
    spark.stop()


if __name__ == "__main__":
    main()
