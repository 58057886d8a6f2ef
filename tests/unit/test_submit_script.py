"""spark-submit.sh itself: what command it builds (LOOKBOOK_SUBMIT_DRY_RUN=1 prints it,
NUL-separated, instead of running Spark), which job names and keys it refuses, all before
any JVM starts."""
import os
import subprocess
import sys

import pytest

from lookbook.pipelines.runner import job_names

from helpers import REPO, SUBMIT, submit


def run_script(*args, **env):
    return subprocess.run([SUBMIT, *args], capture_output=True, timeout=120, cwd=REPO,
                          env={**os.environ, "LOOKBOOK_PYTHON": sys.executable,
                               "LOOKBOOK_SUBMIT_DRY_RUN": "1", **env})


def command(*args, **env) -> list[str]:
    """The argv spark-submit.sh would exec."""
    out = run_script(*args, **env)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.endswith(b"\0")
    return out.stdout.decode().split("\0")[:-1]


def after(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]


def test_dry_run_prints_the_whole_command():
    argv = command("ingest", "warehouse=/tmp/wh")
    assert argv[0].endswith("spark-submit")
    assert argv[-4:] == [str(REPO / "jobs" / "ingest.py"), "--conf",
                         str(REPO / "conf" / "local.yaml"), "warehouse=/tmp/wh"]
    assert after(argv, "--py-files") == [str(REPO / "build" / "lookbook.zip")]
    assert after(argv, "--files") == [str(REPO / "conf" / "local.yaml")]
    assert "spark.sql.session.timeZone=UTC" in after(argv, "--conf")


def test_spark_submit_args_are_split_by_shell_rules_without_globbing(tmp_path):
    (tmp_path / "match-me").write_text("")  # what an unquoted * would expand to
    argv = command("ingest", SPARK_SUBMIT_ARGS="--conf \"spark.driver.extraJavaOptions=-Da=1 "
                   "-Db=2\" --files 'a b.txt' * $HOME `id` --name x\\ y")
    start = argv.index("--py-files") - 9
    # spark-submit keeps one --files: the config joins the given list (see the next test).
    assert argv[start:start + 9] == ["--conf", "spark.driver.extraJavaOptions=-Da=1 -Db=2",
                                     "--files", f"a b.txt,{REPO / 'conf' / 'local.yaml'}", "*",
                                     "$HOME", "`id`", "--name", "x y"]


@pytest.mark.parametrize("conf", [["--conf", "conf/cluster.yaml"], ["--conf=conf/cluster.yaml"]])
def test_the_config_is_shipped_with_files_in_one_list(conf):
    """The job's config goes to spark-submit's --files, added to a --files of
    SPARK_SUBMIT_ARGS: spark-submit would drop all but the last --files."""
    assert after(command("ingest", *conf), "--files") == ["conf/cluster.yaml"]
    argv = command("ingest", *conf, SPARK_SUBMIT_ARGS="--files a.txt,b.txt")
    assert after(argv, "--files") == ["a.txt,b.txt,conf/cluster.yaml"]
    argv = command("ingest", *conf, SPARK_SUBMIT_ARGS="--files=a.txt")
    assert "--files" not in argv and "--files=a.txt,conf/cluster.yaml" in argv


def test_spark_submit_args_with_unbalanced_quotes_are_refused():
    out = run_script("ingest", SPARK_SUBMIT_ARGS="--conf \"spark.x=1")
    assert out.returncode == 2 and out.stdout == b""
    assert b"SPARK_SUBMIT_ARGS does not parse: No closing quotation" in out.stderr


def test_a_config_value_with_a_newline_stays_one_argument(tmp_path):
    conf = tmp_path / "newline.yaml"
    conf.write_text('spark:\n  conf:\n    spark.driver.extraJavaOptions: "-Da=1\\n--master yarn"\n')
    argv = command("ingest", "--conf", str(conf))
    assert "spark.driver.extraJavaOptions=-Da=1\n--master yarn" in after(argv, "--conf")
    assert after(argv, "--master") == ["local[*]"]


@pytest.mark.parametrize("job", ["../setup", "__init__", "jobs/ingest", "ingest/", "-h2",
                                 "--conf", "ingest.py", "", "in*", "../jobs/ingest"])
def test_names_that_are_not_a_job_are_refused_with_the_valid_jobs(job):
    out = run_script(job)
    assert out.returncode == 2 and out.stdout == b""
    assert f"unknown job '{job}'; valid jobs: ".encode() in out.stderr
    listed = out.stderr.decode().split("valid jobs: ")[1].split()
    assert {"ingest", "featurize", "pipeline"} <= set(listed)
    assert not any(name.startswith("_") for name in listed)


def test_an_explicit_conf_is_not_replaced():
    argv = command("ingest", "--conf=conf/cluster.yaml")
    assert argv[-1] == "--conf=conf/cluster.yaml"
    assert str(REPO / "conf" / "local.yaml") not in argv


def test_unknown_job_lists_valid_jobs():
    out = submit("nope")
    assert out.returncode == 2
    assert "unknown job 'nope'" in out.stderr and "ingest" in out.stderr


def test_unknown_key_lists_valid_keys():
    out = submit("ingest", "wherehouse=/tmp/x")
    assert out.returncode != 0
    assert "unknown config key 'wherehouse'" in out.stderr and "warehouse" in out.stderr


# --help never reaches spark-submit: with this, it would fail.
NO_SPARK = {"SPARK_HOME": "/nonexistent/spark"}


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_says_what_a_job_does_reads_and_writes_and_its_settings(flag):
    out = submit("neighbours", flag, "neighbours.k=7", timeout=120, env=NO_SPARK, small=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ./spark-submit.sh neighbours [--conf FILE]")
    assert "\nEvery product's exact top-k." in out.stdout  # the step's docstring
    assert "reads:  products, features\nwrites: neighbours\n" in out.stdout
    assert "\n  neighbours.k = 7  (default: 5)\n" in out.stdout  # the config it would run with
    assert "\n  featurize.backbone = vgg16\n" in out.stdout
    assert "\n  sql.max_rows" not in out.stdout  # another job's settings


def test_sql_help_names_every_table_and_the_shorthands():
    out = submit("sql", "--help", timeout=120, env=NO_SPARK, small=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('usage: ./spark-submit.sh sql ["SELECT ..."]')
    assert "reads:  every table\nwrites: -\n" in out.stdout
    assert "\n  sql.max_rows = 50\n" in out.stdout
    assert "\n  query=... for sql.query=...\n" in out.stdout


def test_pipeline_help_lists_its_steps_in_order_with_their_tables():
    out = submit("refresh", "--help", timeout=120, env=NO_SPARK, small=False)
    assert out.returncode == 0, out.stderr
    steps = out.stdout.split("steps, in order:\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split(":")[0].strip() for line in steps.splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == ["ingest", "augment", "featurize", "train [retrain=true]",
                      "evaluate [retrain=true]", "predict", "neighbours", "duplicates"]
    assert "    reads:  products, features\n    writes: predictions, prediction_rejects" \
        in out.stdout
    assert "\n  refresh.retrain = false\n" in out.stdout
    assert "\n  retrain=... for refresh.retrain=...\n" in out.stdout


def test_an_unknown_pipeline_is_refused_before_spark_starts(tmp_path):
    out = submit("pipeline", "name=nightly", f"warehouse={tmp_path}", env=NO_SPARK)
    assert out.returncode != 0
    assert "no pipeline 'nightly'; pipelines: full (ingest, augment, featurize" in out.stderr


def test_the_pipeline_jobs_are_the_runners():
    from lookbook.cli import PIPELINE_JOBS
    from lookbook.config import load_config
    from lookbook.pipelines.runner import pipeline_name

    cfg = load_config(None, [])
    assert {job for job in job_names() if pipeline_name(job, cfg)} == set(PIPELINE_JOBS)
