"""What one step costs the JVM: its Spark jobs and wall time, a first run on an empty
warehouse and reruns with nothing to commit, in one session (the reruns' ratio to the first
is the figure to compare across CPUs; the job counts do not depend on the CPU).

    .venv/bin/python bench/step_jobs.py                       # ingest, synthetic catalogue
    .venv/bin/python bench/step_jobs.py --data-dir ../shared/data/fashion --sample 0.05

Adaptive execution is on, as in the jobs: each of its query stages is a Spark job.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from machine import cpu_line  # bench/machine.py

from lookbook.config import load_config
from lookbook.io.synthetic import make_catalogue
from lookbook.pipelines.catalogue_steps import ingest
from lookbook.session import build_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="a catalogue folder (default: a synthetic one, "
                                           "with every kind of bad input)")
    parser.add_argument("--sample", type=float, default=1.0, help="ingest.sample_fraction")
    parser.add_argument("--runs", type=int, default=3, help="the first and the reruns")
    args = parser.parse_args()
    print(cpu_line())
    work = Path(tempfile.mkdtemp(prefix="lookbook-step-jobs-"))
    data_dir = args.data_dir
    if not data_dir:
        data_dir = str(work / "catalogue")
        make_catalogue(data_dir, bad_inputs=True)
    cfg = load_config(None, [f"data_dir={data_dir}", f"warehouse={work / 'warehouse'}",
                             f"ingest.sample_fraction={args.sample}",
                             "spark.conf.spark.ui.enabled=false"])
    spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
    tracker = spark.sparkContext.statusTracker()
    first = None
    for run in range(args.runs):
        group = f"run-{run}"
        spark.sparkContext.setJobGroup(group, "ingest")
        started = time.perf_counter()
        result = ingest(spark, cfg)
        seconds = time.perf_counter() - started
        first = first or seconds
        print(f"ingest run {run}: {len(tracker.getJobIdsForGroup(group))} Spark jobs, "
              f"{seconds:.1f} s ({seconds / first:.2f} of the first): {result.summary}")
    spark.stop()


if __name__ == "__main__":
    main()
