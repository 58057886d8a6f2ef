"""Argument handling shared by every job, and the helpers `spark-submit.sh` calls.

    python -m lookbook.cli submit-options JOB [--conf FILE] [key=value ...]   NUL-terminated
    python -m lookbook.cli help JOB [--conf FILE] [key=value ...]   what the job does (--help)
    python -m lookbook.cli package OUT.zip
    python -m lookbook.cli config [--conf FILE] [key=value ...]   the effective config as YAML
    python -m lookbook.cli tables-doc                             docs/tables.md's table reference
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import textwrap
import zipfile
from pathlib import Path

from .config import Config, ConfigError, config_yaml, load_config, valid_keys

HELP = ("-h", "--help")


def parse_job_args(job: str, argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog=f"spark-submit.sh {job}",
        description=f"Run the lookbook '{job}' job.",
        epilog="valid keys: " + ", ".join(valid_keys()))
    parser.add_argument("--conf", help="YAML config file (default conf/local.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a config key; dotted for nested keys")
    args = parser.parse_args(query_argument(argv) if job == "sql" else argv)
    return load_config(args.conf, [job_shorthand(job, item) for item in args.overrides])


# Job arguments that are shorthands for config keys: `similar image=x.jpg` = `similar.image=x.jpg`.
SHORTHANDS = {"similar": ("image", "product_id", "k"), "pipeline": ("name",),
              "vacuum": ("dry_run", "retention_hours"), "refresh": ("retrain",),
              "sql": ("query", "file", "out", "params", "max_rows"),
              "sql_server": ("host", "port", "refresh_seconds"),
              "compare": ("backbones", "sizes", "precisions", "random_init", "photo_queries")}
OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")


def job_shorthand(job: str, item: str) -> str:
    section = item.split("=", 1)[0].split(".")[0]  # params.product_id=1 -> sql.params...
    return f"{job}.{item}" if section in SHORTHANDS.get(job, ()) else item


def query_argument(argv: list[str]) -> list[str]:
    """`sql "SELECT ..."`: the one argument that is neither key=value nor --conf is the query
    (taken as written: it may start with `--` or hold `=`)."""
    out, queries, args = [], [], iter(argv)
    for arg in args:
        if arg == "--conf":
            out += [arg, next(args, "")]
        elif arg.startswith("--conf=") or arg in HELP or OVERRIDE.match(arg):
            out.append(arg)
        else:
            queries.append(arg)
    if len(queries) > 1:
        raise ConfigError(f"sql takes one query, in quotes; got {len(queries)} arguments that "
                          f"are not key=value: {queries}")
    return out + [f"sql.query={q}" for q in queries]


def configure_logging() -> None:
    """lookbook's own progress lines on stdout, plainly; other libraries stay at WARNING."""
    logger = logging.getLogger("lookbook")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run_job(job: str, argv: list[str]) -> None:
    """Entry point of jobs/<job>.py: config, session, the job's steps, a summary, an exit code."""
    from .pipelines.runner import job_steps, pipeline_name, run_job_steps
    from .session import build_spark
    from .sql.views import SqlError

    try:
        if any(arg in HELP for arg in argv):
            print(job_help(job, argv), end="")
            return
        cfg = parse_job_args(job, argv)
        job_steps(job, cfg)
    except (ConfigError, ValueError) as exc:
        sys.exit(f"lookbook {job}: {exc}")
    configure_logging()
    spark = build_spark(cfg.spark, cfg.tensorflow, cfg.table_engine)
    try:
        done, run_id = run_job_steps(spark, cfg, job, lambda line: print(line, flush=True))
    except SqlError as exc:
        sys.exit(f"lookbook {job}: {exc}")
    finally:
        spark.stop()
    if pipeline_name(job, cfg) is not None:
        print(f"\n{job} summary\n" + summary_table([(d.name, d.seconds, d.result.summary)
                                                     for d in done]))
    if run_id:
        from .tracking import store_uri

        print(f"MLflow run {run_id} in {store_uri(cfg)} (see README: Tracking)")


# The jobs that run a named pipeline (pipelines.runner.pipeline_name); only their options
# import the steps, which costs every other job's start seconds.
PIPELINE_JOBS = ("pipeline", "refresh")


def check_pipeline(job: str, cfg: Config) -> None:
    """A pipeline job's steps exist and are in an order their declarations allow: checked
    before spark-submit starts a JVM."""
    if job in PIPELINE_JOBS:
        from .pipelines.runner import job_steps

        try:
            job_steps(job, cfg)
        except ValueError as exc:
            sys.exit(f"lookbook {job}: {exc}")


def job_help(job: str, argv: list[str]) -> str:
    """`JOB --help`: what the job does, the tables it (each of its steps) reads and writes, its
    settings with their values and defaults, its shorthands; from the steps' declarations,
    without Spark. The config is the one the job would run with (--conf, key=value)."""
    from .pipelines import ABOUT, PIPELINES, RETRAIN, STEPS, describe
    from .pipelines.runner import job_steps, pipeline_name

    cfg = parse_job_args(job, [arg for arg in argv if arg not in HELP])
    pipeline = pipeline_name(job, cfg)
    steps = [STEPS[name] for name in job_steps(job, cfg)] if pipeline is None \
        else [STEPS[name] for name in PIPELINES[pipeline]]
    query = ' ["SELECT ..."]' if job == "sql" else ""
    lines = [f"usage: ./spark-submit.sh {job}{query} [--conf FILE] [key=value ...]", ""]
    if pipeline is None:
        lines += [*_wrapped(steps[0].doc), "", *_tables(steps[0])]
        if steps[0].runs:
            lines += ["", "runs, each declaring its own: "
                      + ", ".join(s.name for s in steps[0].runs)]
            steps += steps[0].runs
    else:
        lines += [*_wrapped(f"Runs pipeline {pipeline!r}. {ABOUT[pipeline]}"), "",
                  "steps, in order:"]
        for label, s in zip(describe(pipeline), steps):
            lines += _wrapped(f"{label}: {s.doc}", "  ", "      ")
            lines += [f"    {t}" for t in _tables(s)]
        lines += ["", f"pipelines (pipeline name=NAME): {', '.join(PIPELINES)}"]
    sections = [job] if job in dataclasses.asdict(Config()) else []
    sections += ["refresh.retrain"] if pipeline in RETRAIN else []
    lines += ["", "settings (key = value; the built-in default where the config differs):"]
    lines += _settings(cfg, [*sections, *(e for s in steps for e in s.settings)])
    if job in SHORTHANDS:
        lines += ["", "shorthands:", *(f"  {name}=... for {job}.{name}=..."
                                       for name in SHORTHANDS[job])]
    lines += ["", *_wrapped("Every job also takes warehouse, table_engine, spark.*, "
                            "tensorflow.*, tables.* and tracking.*: `python -m lookbook.cli "
                            "config` prints every setting.")]
    return "\n".join(lines) + "\n"


def _wrapped(text: str, first: str = "", rest: str = "") -> list[str]:
    return textwrap.wrap(text, 96, initial_indent=first, subsequent_indent=rest)


def _tables(step) -> list[str]:
    from .io.catalog import Table

    def named(tables) -> str:
        return "every table" if set(tables) == set(Table) else ", ".join(tables) or "-"
    return [f"reads:  {named(step.reads)}", f"writes: {named(step.writes)}"]


def _settings(cfg: Config, entries: list[str]) -> list[str]:
    """`key = value` of every key the entries (keys or sections) name, in the config's order."""
    keys = [key for key in valid_keys()
            if any(key == entry or key.startswith(f"{entry}.") for entry in entries)]
    lines = []
    for key in keys:
        value, default = _setting(cfg, key), _setting(Config(), key)
        lines.append(f"  {key} = {_shown(value)}"
                     + ("" if value == default else f"  (default: {_shown(default)})"))
    return lines


def _setting(cfg: Config, key: str):
    node = cfg
    for part in key.removesuffix(".<any>").split("."):
        node = getattr(node, part)
    return node


def _shown(value) -> str:
    """As an override would give it: key=value."""
    if isinstance(value, str) and value:
        return value
    return json.dumps(value) if value is not None else "null"


def summary_table(rows: list[tuple[str, float, str]]) -> str:
    import pandas as pd  # here: spark-submit.sh's options and --help need no pandas

    table = pd.DataFrame(rows, columns=["step", "seconds", "result"])
    table["seconds"] = table["seconds"].map(lambda s: f"{s:.1f}")
    return table.to_string(index=False)


def package(out_zip: str) -> Path:
    """The lookbook package as a zip for spark-submit --py-files (executors import it).
    Written beside and renamed into place: a job started at the same time may be reading
    the zip this one replaces."""
    source = Path(__file__).resolve().parent
    out = Path(out_zip)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{os.getpid()}.{out.name}")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.rglob("*.py")):
            zf.write(path, Path("lookbook") / path.relative_to(source))
    os.replace(partial, out)
    return out


def main(argv: list[str] | None = None) -> None:
    from .session import submit_options

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["package"] and len(argv) == 2:
            print(package(argv[1]))
        elif argv[:1] == ["submit-options"] and len(argv) >= 2:
            cfg = parse_job_args(argv[1], argv[2:])
            check_pipeline(argv[1], cfg)
            # NUL-terminated: a conf value may contain a newline (spark-submit.sh reads them
            # with mapfile -d '').
            options = submit_options(cfg.spark, cfg.tensorflow, cfg.table_engine)
            sys.stdout.write("".join(f"{option}\0" for option in options))
        elif argv[:1] == ["help"] and len(argv) >= 2:
            print(job_help(argv[1], argv[2:]), end="")
        elif argv[:1] == ["config"]:
            print(config_yaml(parse_job_args("config", argv[1:])), end="")
        elif argv == ["tables-doc"]:
            from . import pipelines  # noqa: F401  (the steps declare the tables' writers)
            from .io.catalog import reference_markdown

            print(reference_markdown(), end="")
        else:
            sys.exit(__doc__)
    except ConfigError as exc:
        sys.exit(f"lookbook: {exc}")


if __name__ == "__main__":
    main()
