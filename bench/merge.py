"""File size against rewrite cost: the real `products` table written at several
`tables.products_per_file`, then one merge changing 1 % of its products (uniformly spread:
0.4 % added, 0.6 % replaced or deleted), in the same run. Prints per layout the files, the
bytes the merge wrote as a fraction of the table, the merge's time and a full scan's time, as
ratios to the largest layout.

    .venv/bin/python bench/merge.py --products /tmp/refresh-bench/warehouse/products
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from machine import cpu_line  # bench/machine.py

from lookbook.config import load_config
from lookbook.io.tables import merge_table, read_table, write_table
from lookbook.session import build_spark


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", required=True, help="a products Delta table")
    parser.add_argument("--per-file", default="100,1000,10000,100000")
    parser.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args()
    cfg = load_config(None, [])
    spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
    source = read_table(spark, args.products).persist()
    ids = sorted(r[0] for r in source.select("product_id").collect())
    rng = random.Random(0)
    n = round(len(ids) * args.fraction)
    touched = rng.sample(ids, n - round(n * 0.4))
    replaced, deleted = touched[: len(touched) // 2], touched[len(touched) // 2:]
    from pyspark.sql import functions as F

    new_rows = (source.where(F.col("product_id").isin(rng.sample(ids, round(n * 0.4))))
                .withColumn("product_id", F.col("product_id") + max(ids)))
    upserts = (source.where(F.col("product_id").isin(replaced))
               .withColumn("display_name", F.concat("display_name", F.lit(" (new)")))
               .unionByName(new_rows)).persist()
    removed = spark.createDataFrame([(i,) for i in deleted], "product_id long")
    upserts.count()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lookbook-merge-") as tmp:
        for per_file in [int(x) for x in args.per_file.split(",")]:
            path = str(Path(tmp) / f"p{per_file}")
            full = write_table(source, path, keys=("product_id",), cluster_by=("product_id",),
                               rows_per_file=per_file)
            started = time.perf_counter()
            merged = merge_table(upserts, removed, path, ("product_id",), keys=("product_id",),
                                 cluster_by=("product_id",), rows_per_file=per_file)
            merge_s = time.perf_counter() - started
            started = time.perf_counter()
            read_table(spark, path).agg(F.sum(F.length("image"))).collect()
            scan_s = time.perf_counter() - started
            rows.append((per_file, full.files_added, merged.files_removed,
                         merged.bytes_written / full.bytes_written, merge_s, scan_s))
            shutil.rmtree(path)
    base = rows[-1]
    print(f"\n{len(ids):,} products, {n:,} changed ({len(replaced)} replaced, {len(deleted)} "
          f"deleted, {new_rows.count()} added)")
    print("| products per file | files | files rewritten | bytes written / table | merge time "
          "(ratio) | full scan time (ratio) |\n| ---: | ---: | ---: | ---: | ---: | ---: |")
    for per_file, files, rewritten, share, merge_s, scan_s in rows:
        print(f"| {per_file:,} | {files} | {rewritten} | {share:.3f} | {merge_s:.1f} s "
              f"({merge_s / base[4]:.2f}) | {scan_s:.1f} s ({scan_s / base[5]:.2f}) |")
    spark.stop()


if __name__ == "__main__":
    main()
