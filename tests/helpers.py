"""What the tests share besides fixtures: launching jobs as a user does, the settings every
run of a test pins, and small builders. Test modules import from here, never from each other
(or from conftest)."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest
from PIL import Image, ImageOps

from lookbook.config import Config, load_config
from lookbook.io.catalog import Catalog

REPO = Path(__file__).resolve().parents[1]
SUBMIT = str(REPO / "spark-submit.sh")
# pip's pyspark carries Spark's launch scripts (spark-class, beeline); the venv's bin/
# wrappers would look for Spark with the system python.
SPARK_HOME = Path(pyspark.__file__).parent
# A product added to the shared catalogue with the same image bytes as the first product.
DUPLICATE_ID = 999_001
# Settings every test run pins, in-process and through spark-submit alike: the default
# precision, auto, is bf16 on CPUs with native bf16 and fp32 elsewhere, and two runs a test
# compares must compute the same features (test_featurize covers auto itself).
PINNED = ("featurize.precision=fp32",)
# A job started by a test: small, so that two can run at once beside the tests' own session.
SMALL_JOB = ("spark.master=local[2]", "spark.driver_memory=2g")

# The shared pipeline run's settings: a few epochs (the steps and their records are under
# test, not the model's quality: test_classifier's), copies of the small classes, neighbours
# within a gender (a relabelled product changes group: test_refresh_jobs).
PIPELINE_SETTINGS = ("augment.enabled=true", "augment.target_per_class=15",
                     "augment.max_factor=3", "train.epochs=4", "neighbours.same=[gender]")


def real_data_dir() -> Path:
    return Path(os.environ.get("LOOKBOOK_REAL_DATA", REPO.parent / "shared" / "data" / "fashion"))


def free_port() -> int:
    """A loopback port nothing listens on now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(catalogue_dir: Path | str, warehouse: Path | str, weights: Path | str,
                 *overrides: str) -> list[str]:
    """key=value settings of a test run: the same list configures an in-process step
    (`config_for`) and a job (`submit`, `start`), so both compute alike."""
    return [f"data_dir={catalogue_dir}", f"warehouse={warehouse}",
            f"featurize.weights_cache={weights}", *PINNED, *overrides]


def config_for(catalogue_dir: Path | str, warehouse: Path | str, weights: Path | str,
               *overrides: str) -> Config:
    return load_config(None, settings_for(catalogue_dir, warehouse, weights, *overrides))


def copy_warehouse(cfg: Config, to: Path, *overrides: str) -> Config:
    """A private copy of `cfg`'s warehouse, and its config (same catalogue and weights)."""
    copy_tables(Path(cfg.warehouse), to)
    return config_for(cfg.data_dir, to, cfg.featurize.weights_cache, *overrides)


def copy_tables(warehouse: Path, to: Path) -> None:
    """`warehouse` copied to `to`, its tracking store's artefact folders moved along: MLflow
    records them as absolute paths, and a copy's runs must not write into the original."""
    import sqlite3

    shutil.copytree(warehouse, to)
    if (to / "mlflow.db").exists():
        old, new = Path(warehouse).resolve().as_uri(), Path(to).resolve().as_uri()
        with sqlite3.connect(to / "mlflow.db") as db:
            db.execute("UPDATE experiments SET artifact_location = "
                       "replace(artifact_location, ?, ?)", (old, new))
            db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
            db.execute("UPDATE logged_models SET artifact_location = "
                       "replace(artifact_location, ?, ?)", (old, new))
        db.close()


def settings_of(cfg: Config, *overrides: str) -> list[str]:
    """The settings that made `cfg` (a `config_for` config), for a job on the same warehouse."""
    return settings_for(cfg.data_dir, cfg.warehouse, cfg.featurize.weights_cache, *overrides)


def job_env(env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "LOOKBOOK_PYTHON": sys.executable, **(env or {})}


def submit(job: str, *args: str, env: dict[str, str] | None = None, timeout: float = 900,
           small: bool = True) -> subprocess.CompletedProcess:
    """`./spark-submit.sh JOB ...` as a user runs it, to its end."""
    return subprocess.run([SUBMIT, job, *(SMALL_JOB if small else ()), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=job_env(env))


def start(job: str, *args: str, env: dict[str, str] | None = None,
          output: Path | None = None) -> subprocess.Popen:
    """The job as a user starts it, in its own process group (the JVM and its Python), its
    output piped (or written to `output`, for a server the test reads while it runs)."""
    sink = open(output, "w") if output else subprocess.PIPE  # noqa: SIM115 (the job owns it)
    try:
        return subprocess.Popen([SUBMIT, job, *SMALL_JOB, *args], stdout=sink,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env=job_env(env), start_new_session=True)
    finally:
        if output:
            sink.close()


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the job's whole process group as soon as `ready()` holds."""
    deadline = time.time() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail("the job ended before the moment to kill it:\n"
                        f"{process.stdout.read()[-3000:]}")
        assert time.time() < deadline, "the moment to kill the job never came"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the process group (a server and what it started), SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def poisoned(features, values: dict):
    """`features` with the embeddings of the given products replaced by one value repeated
    (NaN, inf, 0: vectors without a direction, as an older table may hold)."""
    from pyspark.sql import functions as F

    embedding = F.col("embedding")
    for pid, value in values.items():
        embedding = F.when(F.col("product_id") == pid,
                           F.array_repeat(F.lit(value).cast("float"), F.size("embedding"))
                           ).otherwise(embedding)
    return features.withColumn("embedding", embedding)


# A saved model's info, for models made by `tiny_classifier`.
TINY_INFO = {"label_column": "master_category", "labels": ["a", "b", "c"], "input_size": [8, 6],
             "features": {}, "split": {"train": 0.8, "validation": 0.1, "salt": ""}}


def tiny_classifier(seed=0):
    """Raw RGB -> 3 probabilities, with lookbook's own normalisation layer inside."""
    import keras

    from lookbook.features.feature_model import Preprocess

    keras.utils.set_random_seed(seed)
    images = keras.Input((None, None, 3), name="images")
    x = Preprocess("torch", name="preprocess")(images)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, keras.layers.Dense(3, activation="softmax")(x))


# --- a day of catalogue work, and what the refresh tests compare -----------------------------

NEIGHBOUR_COLUMNS = ["product_id", "rank", "neighbour_id", "score"]


def change_catalogue(root: Path, products: list[int]) -> dict[str, list[int]]:
    """Add, change and delete some of `products` in a catalogue folder the way a day of
    catalogue work does, with exact ties (identical images) among the added and changed."""
    styles = root / "styles.csv"
    header, *lines = styles.read_text().splitlines()
    ids = sorted(products)
    rows = {int(line.split(",")[0]): line for line in lines
            if line.split(",")[0].isdigit() and int(line.split(",")[0]) in products}
    image = lambda pid: root / "images" / f"{pid}.jpg"  # noqa: E731

    def mirrored(pid: int) -> bytes:
        out = io.BytesIO()
        ImageOps.mirror(Image.open(image(pid)).convert("RGB")).save(out, "JPEG", quality=90)
        return out.getvalue()

    def with_id(line: str, pid: int) -> str:
        return ",".join([str(pid), *line.split(",")[1:]])

    new = [990_001, 990_002, 990_003]
    # A copy of the duplicated product's image (a three-way tie at 1.0), a new image, and an
    # existing row's labels with another product's image.
    shutil.copy(image(DUPLICATE_ID), image(new[0]))
    image(new[1]).write_bytes(mirrored(ids[5]))
    shutil.copy(image(ids[-3]), image(new[2]))
    added = [with_id(rows[DUPLICATE_ID], new[0]), with_id(rows[ids[5]], new[1]),
             with_id(rows[ids[7]], new[2])]
    # New images for two products (one becomes identical to another product's), new labels
    # for a third (its gender: with neighbours.same=[gender] it changes group).
    image_changed = [ids[10], ids[11]]
    shutil.copy(image(ids[12]), image(ids[10]))
    image(ids[11]).write_bytes(mirrored(ids[11]))
    relabelled = ids[14]
    fields = rows[relabelled].split(",")
    fields[1] = "Women" if fields[1] != "Women" else "Men"
    rows[relabelled] = ",".join(fields)
    # Deleted: the original of the duplicated image, and one more.
    deleted = [ids[0], ids[20]]
    assert DUPLICATE_ID not in deleted
    for pid in deleted:
        image(pid).unlink()
    kept = [rows.get(int(line.split(",")[0]), line) if line.split(",")[0].isdigit() else line
            for line in lines
            if not (line.split(",")[0].isdigit() and int(line.split(",")[0]) in deleted)]
    styles.write_text("\n".join([header, *kept, *added]) + "\n")
    return {"new": new, "image": image_changed, "labels": [relabelled], "deleted": deleted}


def neighbours_table(spark, warehouse) -> pd.DataFrame:  # noqa: F821
    table = Catalog(spark, str(warehouse)).read("neighbours").select(*NEIGHBOUR_COLUMNS)
    return table.toPandas().sort_values(["product_id", "rank"]).reset_index(drop=True)


def product_ids(spark, warehouse) -> list[int]:
    return [r[0] for r in Catalog(spark, str(warehouse)).read("products").select("product_id").collect()]


def job_runs(warehouse: Path | str, job: str) -> list:
    """The MLflow runs of `job` in the warehouse's tracking store, oldest first (a killed
    job's run stays RUNNING)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(warehouse).resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("lookbook")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`lookbook.job` = '{job}'",
                              order_by=["attributes.start_time ASC"])
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def step_metrics(warehouse: Path | str, parent_run_id: str) -> dict[str, dict[str, float]]:
    """The metrics of each step of a job's run (its nested MLflow runs), by step name."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(warehouse).resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("lookbook")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {run.info.run_name: run.data.metrics for run in runs}


def full_recomputation(spark, cfg, tmp_path: Path, *steps) -> Path:
    """The warehouse copied without the tables `steps` write, and those steps run: what a
    full recomputation of them gives."""
    copy = tmp_path / "full"
    copy_tables(Path(cfg.warehouse), copy)
    for name in ("neighbours", "duplicates"):
        shutil.rmtree(copy / name, ignore_errors=True)
    full = config_for(Path(cfg.data_dir), copy, Path(cfg.featurize.weights_cache),
                      *[f"neighbours.same=[{','.join(cfg.neighbours.same)}]"])
    for step in steps:
        assert not step(spark, full).metrics.get("incremental")
    return copy
