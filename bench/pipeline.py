"""The whole `full` pipeline on a catalogue folder, as `./spark-submit.sh pipeline` runs it
(same config, same session, every step tracked), with a table per step: seconds, products per
second (the catalogue's products over the step's time), share of the total, and the peak
resident memory of the driver (this Python process and its JVM) and of the Python workers
(all of them together), sampled every 0.2 s.

    .venv/bin/python bench/pipeline.py --data ../shared/data/fashion [key=value ...]

The warehouse is a fresh temporary folder (--warehouse to choose it, --keep to keep it);
the weights cache is the configured one. Prints the CPU first, and the table as Markdown
(also written to --out, if given).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from machine import cpu_line  # noqa: E402  (bench/machine.py)
from neighbours import descendants, rss_of  # noqa: E402  (bench/neighbours.py)

from lookbook.cli import configure_logging, parse_job_args  # noqa: E402
from lookbook.pipelines.runner import run_job_steps  # noqa: E402
from lookbook.session import build_spark  # noqa: E402


class StepMemory:
    """Peak RSS per step of the driver (this process + the JVM) and of the Python workers,
    by a sampling thread; `start(step)` opens a step's peaks."""

    def __init__(self):
        self.peaks: dict[str, list[int]] = {}
        self.step: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def start(self, step: str) -> None:
        self.peaks.setdefault(step, [0, 0])
        self.step = step

    def _run(self) -> None:
        import os

        me = os.getpid()
        while not self._stop.is_set():
            if self.step is not None:
                driver, workers = rss_of(me), 0
                for pid in descendants(me):
                    if "java" in command_of(pid):
                        driver += rss_of(pid)
                    else:
                        workers += rss_of(pid)
                peak = self.peaks[self.step]
                peak[0], peak[1] = max(peak[0], driver), max(peak[1], workers)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def table(rows: list[tuple[str, float, float, int, int]], products: int) -> str:
    total = sum(r[1] for r in rows)
    lines = ["| step | seconds | products/s | share | driver peak MiB | workers peak MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for step, seconds, rate, driver, workers in rows:
        shown = f"{rate:,.0f}" if rate and seconds >= 0.5 else "-"  # a step that did nothing
        lines.append(f"| {step} | {seconds:,.1f} | {shown} | {seconds / total:.1%} | "
                     f"{driver / 2**20:,.0f} | {workers / 2**20:,.0f} |")
    lines.append(f"| **total** | **{total:,.1f}** ({total / 60:.1f} min) | "
                 f"{products / total:,.0f} | 100% | | |")
    return "\n".join(lines)


def main() -> None:
    print(cpu_line(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="catalogue folder (styles.csv, images/)")
    parser.add_argument("--warehouse", help="default: a fresh temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the warehouse")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    warehouse = Path(args.warehouse or tempfile.mkdtemp(prefix="lookbook-bench-pipeline-"))
    cfg = parse_job_args("pipeline", [f"data_dir={args.data}", f"warehouse={warehouse}",
                                      "name=full", *args.overrides])
    print(f"warehouse {warehouse}; precision {cfg.featurize.precision}; "
          f"overrides {' '.join(args.overrides) or 'none'}", flush=True)
    configure_logging()
    memory = StepMemory()

    def progress(line: str) -> None:
        if line.startswith("[") and line.endswith(" ..."):
            memory.start(line.split("] ", 1)[1][:-4])
        print(line, flush=True)

    started = time.time()
    spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
    memory.start("session start")
    session_seconds = time.time() - started
    try:
        done, _ = run_job_steps(spark, cfg, "pipeline", progress)
    finally:
        spark.stop()
        memory.stop()
    products = done[0].result.metrics["products"]
    rows = [("session start", session_seconds, 0.0, *memory.peaks.get("session start", [0, 0]))]
    rows += [(d.name, d.seconds, products / d.seconds if d.seconds else 0.0,
              *memory.peaks.get(d.name, [0, 0])) for d in done]
    report = (f"{cpu_line()}\n\n`full` pipeline on {args.data}: {products:,} products, "
              f"precision {cfg.featurize.precision}\n\n{table(rows, products)}\n")
    print("\n" + report)
    if args.out:
        Path(args.out).write_text(report)
    if not args.keep and not args.warehouse:
        shutil.rmtree(warehouse, ignore_errors=True)


if __name__ == "__main__":
    main()
