"""Argument handling shared by every job, and the helpers `spark-submit.sh` calls.

    python -m lookbook.cli submit-options JOB [--conf FILE] [key=value ...]
    python -m lookbook.cli package OUT.zip
"""
from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

from .config import Config, ConfigError, load_config, valid_keys


def parse_job_args(job: str, argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog=f"spark-submit.sh {job}",
        description=f"Run the lookbook '{job}' job.",
        epilog="valid keys: " + ", ".join(valid_keys()))
    parser.add_argument("--conf", help="YAML config file (default conf/local.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a config key; dotted for nested keys")
    args = parser.parse_args(argv)
    return load_config(args.conf, [job_shorthand(job, item) for item in args.overrides])


# Job arguments that are shorthands for config keys: `similar image=x.jpg` = `similar.image=x.jpg`.
SHORTHANDS = {"similar": ("image", "product_id", "k")}


def job_shorthand(job: str, item: str) -> str:
    key = item.split("=", 1)[0]
    return f"{job}.{item}" if key in SHORTHANDS.get(job, ()) else item


def run_job(job: str, argv: list[str]) -> None:
    """Entry point of jobs/<job>.py: config, session, the step, a clean exit code."""
    from .session import build_spark
    from .steps import PIPELINE, STEPS, summary_table

    try:
        cfg = parse_job_args(job, argv)
    except ConfigError as exc:
        sys.exit(f"lookbook {job}: {exc}")
    steps = PIPELINE if job == "pipeline" else [job]
    spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
    done = []
    try:
        for i, step in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {step} ...", flush=True)
            started = time.time()
            result = STEPS[step](spark, cfg)
            done.append((step, time.time() - started, result))
            print(f"[{i}/{len(steps)}] {step} done in {done[-1][1]:.1f} s: {result}", flush=True)
        if job == "pipeline":
            print("\npipeline summary\n" + summary_table(done))
    finally:
        spark.stop()


def package(out_zip: str) -> Path:
    """The lookbook package as a zip for spark-submit --py-files (executors import it)."""
    source = Path(__file__).resolve().parent
    out = Path(out_zip)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.rglob("*.py")):
            zf.write(path, Path("lookbook") / path.relative_to(source))
    return out


def main(argv: list[str] | None = None) -> None:
    from .session import submit_options

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["package"] and len(argv) == 2:
        print(package(argv[1]))
    elif argv[:1] == ["submit-options"] and len(argv) >= 2:
        try:
            cfg = parse_job_args(argv[1], argv[2:])
        except ConfigError as exc:
            sys.exit(f"lookbook: {exc}")
        print("\n".join(submit_options(cfg.spark, cfg.tensorflow, cfg.table_engine)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
