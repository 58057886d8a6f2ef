"""Shared fixtures: one local SparkSession per test process, the catalogues, and the
warehouses that many tests read, each built once for all test processes (`built_once`).

The tree is a pyramid: tests/unit (no Spark), tests/spark (in-process Spark on small frames),
tests/e2e (spark-submit jobs, a standalone cluster, kills, concurrent jobs, notebooks).
Markers (pytest.ini) are set here: `spark` and `real_data` from the fixtures a test uses,
`e2e` from its folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from lookbook.config import Config, SparkSettings, TensorflowSettings
from lookbook.io.synthetic import make_catalogue
from lookbook.session import build_spark

from helpers import (
    DUPLICATE_ID,
    PIPELINE_SETTINGS,
    REPO,
    config_for,
    copy_warehouse,
    real_data_dir,
    settings_for,
    submit,
)

# Every JVM the tests start (spark-submit jobs, a cluster, beeline, notebooks' sessions) runs
# for seconds to minutes on 2 cores: C2 compilation costs more CPU than it saves (the cluster
# test: 488 s -> 250 s with this and its own settings). The serial collector: an ingest job
# 24.9 s -> 23.1 s (its heap is small; G1's concurrent threads only compete for the cores).
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
# What built_once keeps: across sessions on a developer's machine; CI points it at a fresh
# folder, so that its time is the time of a new machine.
CACHE = Path(os.environ.get("LOOKBOOK_TEST_CACHE", Path.home() / ".cache" / "lookbook" / "tests"))


def pytest_collection_modifyitems(items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "spark" in names:
            item.add_marker(pytest.mark.spark)
        if "real_data" in names:
            item.add_marker(pytest.mark.real_data)
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)
    # The longest files first: with two workers (`make test`, a file at a time each), a long
    # file taken last would run alone at the end.
    items.sort(key=lambda item: LONGEST_FILES.index(item.path.name)
               if item.path.name in LONGEST_FILES else len(LONGEST_FILES))


# By their time in `make test` (slowest first; the rest keep their order after these).
LONGEST_FILES = ["test_cluster.py", "test_notebooks.py", "test_compare.py", "test_refresh_jobs.py",
                 "test_jobs.py", "test_crash_safety.py", "test_sql_jobs.py"]


# --- built once for every test process ------------------------------------------------------

def pytest_configure(config):
    """The code's digest, taken once by the process that starts the session: its workers
    (pytest-xdist) inherit it, so that all of them agree on the shared folders' keys even
    when a file changes while they run."""
    if not hasattr(config, "workerinput"):
        os.environ["LOOKBOOK_TEST_CODE_DIGEST"] = code_digest()


def code_digest() -> str:
    """A digest of the code that builds the shared folders (the package, its jobs, these
    test files, the pinned dependencies): a change to any gives new keys."""
    digest = hashlib.sha256()
    files = [*sorted((REPO / "lib" / "lookbook").rglob("*.py")), *sorted((REPO / "jobs").glob("*.py")),
             *sorted((REPO / "conf").rglob("*.*")), REPO / "spark-submit.sh",
             REPO / "constraints.txt", REPO / "tests" / "conftest.py", REPO / "tests" / "helpers.py"]
    for path in files:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def shared_key(name: str, *inputs) -> str:
    code = os.environ.get("LOOKBOOK_TEST_CODE_DIGEST") or code_digest()
    return f"{name}-{hashlib.sha256(repr((code, inputs)).encode()).hexdigest()[:16]}"


def manifest(folder: Path) -> dict[str, list[int]]:
    """Every file under `folder` with its size and modification time."""
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.rglob("*")) if p.is_file()}


BUILT: dict[Path, dict] = {}  # what this process took from built_once, with its manifest


def built_once(name: str, build: Callable[[Path], None], *inputs,
               read_only: tuple[str, ...] = ()) -> Path:
    """The folder `build` fills, built by the first test process to ask (the others wait on
    a file lock and then read it): one build per test session, or fewer, since the folder
    is kept and found again while the code and `inputs` are the same (`code_digest`). A
    build that fails leaves no folder behind; builds of older code go after two days. Its
    `read_only` subfolders must be the same when the process ends (checked by
    `shared_folders_stay_unchanged`): a test that writes works on a copy."""
    key = shared_key(name, *inputs)
    target = CACHE / key
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = target / ".built"
        if not done.exists():
            forget_old_builds(name)
            shutil.rmtree(target, ignore_errors=True)  # a failed build's
            target.mkdir()
            try:
                build(target)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            done.write_text(json.dumps({sub: manifest(target / sub) for sub in read_only}))
    os.utime(target)  # in use (forget_old_builds)
    if read_only:
        BUILT[target] = json.loads(done.read_text())
    return target


def forget_old_builds(name: str, days: float = 2) -> None:
    """Builds of other code not used for `days`: a test session still reading one keeps
    it (its mtime is refreshed each time a process takes it)."""
    import time

    for old in CACHE.glob(f"{name}-*"):
        if time.time() - old.stat().st_mtime > days * 86400:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def shared_folders_stay_unchanged():
    yield
    changed = [f"{folder / sub}" for folder, subs in BUILT.items() for sub, files in subs.items()
               if manifest(folder / sub) != files]
    assert not changed, (f"tests changed shared folders (copy them to write): {changed}")


@pytest.fixture(scope="session", autouse=True)
def no_tracking_store_in_the_checkout():
    """Every run belongs in its warehouse's store: MLflow's default, ./mlflow.db in the
    working directory, appearing in the checkout means some code used no store of ours."""
    strays = [REPO / "mlflow.db", REPO / "mlruns", REPO / "mlartifacts"]
    before = {p for p in strays if p.exists()}
    yield
    created = [p.name for p in strays if p.exists() and p not in before]
    assert not created, f"tests left MLflow's default store in the checkout: {created}"


# A Spark driver's workload for the JVM class archive below: sessions, SQL, Parquet, Arrow and
# Python workers, as the jobs and the tests' own session use them.
CLASS_ARCHIVE_WORKLOAD = """
import sys
from lookbook.config import SparkSettings, TensorflowSettings
from lookbook.session import build_spark
spark = build_spark(SparkSettings(master="local[2]", app_name="class-archive",
                                  conf={"spark.ui.enabled": "false"}), TensorflowSettings())
df = spark.range(2000).selectExpr("id", "id % 7 AS k", "cast(id AS string) AS s")
df.write.mode("overwrite").parquet(sys.argv[1])
back = spark.read.parquet(sys.argv[1])
back.groupBy("k").count().join(back, "k").orderBy("id").limit(5).collect()
back.mapInArrow(lambda batches: batches, back.schema).count()
back.mapInPandas(lambda frames: frames, back.schema).toPandas()
spark.stop()
"""


@pytest.fixture(scope="session", autouse=True)
def jvm_class_archive():
    """Every JVM the tests start loads Spark's classes again: an AppCDS archive of them, dumped
    once by a short Spark driver (~40 s), saves each later driver about 6 s (six ingest jobs:
    201 s -> 167 s). Kept in ~/.cache/lookbook/jvm per Java and Spark version. The dump runs
    beside the tests (nothing waits for it: a JVM started before it is done runs without it).
    A JVM whose class path differs (spark-submit's launcher, a cluster's daemons) ignores it,
    silently (cds logging off)."""
    import threading

    import pyspark

    if "SharedArchiveFile" in os.environ.get("JAVA_TOOL_OPTIONS", ""):
        yield
        return
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    key = hashlib.sha256(f"{java}{pyspark.__file__}{pyspark.__version__}".encode()).hexdigest()
    archive = Path.home() / ".cache" / "lookbook" / "jvm" / f"spark-classes-{key[:16]}.jsa"
    archive.parent.mkdir(parents=True, exist_ok=True)

    def use_archive() -> None:
        with open(archive.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one dump for every test process
            if not archive.exists() and not dump_class_archive(archive):
                return
        os.environ["JAVA_TOOL_OPTIONS"] += (f" -XX:SharedArchiveFile={archive}"
                                            " -Xlog:cds=off -Xlog:cds+dynamic=off")

    if archive.exists():
        use_archive()
        yield
        return
    dumping = threading.Thread(target=use_archive, name="jvm-class-archive", daemon=True)
    dumping.start()
    yield
    dumping.join()


def dump_class_archive(archive: Path) -> bool:
    work = Path(tempfile.mkdtemp(prefix="lookbook-jvm-archive-"))
    dumped = archive.with_name(f".{os.getpid()}.{archive.name}")  # renamed when complete
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS":
           f'--driver-java-options "-XX:ArchiveClassesAtExit={dumped}" pyspark-shell'}
    try:
        done = subprocess.run([sys.executable, "-c", CLASS_ARCHIVE_WORKLOAD, str(work / "table")],
                              capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0 or not dumped.exists():
            warnings.warn(f"no JVM class archive (JVMs start as before): {done.stderr[-1000:]}",
                          stacklevel=1)
            return False
        os.replace(dumped, archive)
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        dumped.unlink(missing_ok=True)  # a partial archive of a failed dump


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real Kaggle catalogue. Absent on a user's fresh machine (skip, visibly); CI sets
    LOOKBOOK_REQUIRE_REAL_DATA=1, where absence is a failure."""
    path = real_data_dir()
    if not (path / "styles.csv").exists():
        if os.environ.get("LOOKBOOK_REQUIRE_REAL_DATA") == "1":
            pytest.fail(f"real catalogue required (LOOKBOOK_REQUIRE_REAL_DATA=1) but {path} is absent")
        pytest.skip(f"real catalogue not found at {path} (set LOOKBOOK_REAL_DATA)")
    return path


@pytest.fixture(scope="session")
def spark():
    session = build_spark(
        SparkSettings(master="local[2]", app_name="lookbook-tests", driver_memory="3g",
                      shuffle_partitions=4,
                      # No UI server (JAVA_TOOL_OPTIONS above keeps the JVM from C2: 7 % of
                      # `make test-fast`). No adaptive execution: on frames of a few hundred
                      # rows each of its query stages is a Spark job of its own (an
                      # incremental neighbours update: 143 jobs, 12.7 s; without: 63, 8.7 s),
                      # and no result may depend on it. The jobs (tests/e2e) run with it, as
                      # users do.
                      conf={"spark.ui.enabled": "false", "spark.sql.adaptive.enabled": "false"}),
        TensorflowSettings())
    yield session
    session.stop()


@pytest.fixture(scope="session")
def bad_catalogue(tmp_path_factory) -> tuple[Path, dict]:
    """Synthetic catalogue with every kind of bad input, and what the ingest should make of it."""
    root = tmp_path_factory.mktemp("bad_catalogue")
    return root, make_catalogue(root, bad_inputs=True)


@pytest.fixture(scope="session")
def bad_result(spark, bad_catalogue):
    """The bad catalogue ingested (not written): products, rejects and the summary counts."""
    from lookbook.io.ingest import ingest_catalogue

    result = ingest_catalogue(spark, str(bad_catalogue[0]), max_image_pixels=50_000_000,
                              max_file_bytes=1_000_000)
    yield result
    result.release()


# --- the shared catalogue and its warehouses ------------------------------------------------

def make_shared_catalogue(root: Path) -> dict:
    """Every class, bad inputs, and product DUPLICATE_ID whose image has the same bytes as
    the first product's."""
    made = make_catalogue(root, scale=2, seed=7, bad_inputs=True)
    lines = (root / "styles.csv").read_text().splitlines()
    first = lines[1].split(",")
    lines.append(",".join([str(DUPLICATE_ID)] + first[1:]))
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    shutil.copy(root / "images" / f"{first[0]}.jpg", root / "images" / f"{DUPLICATE_ID}.jpg")
    made["product_ids"] = sorted(made["product_ids"] + [DUPLICATE_ID])
    made["duplicate_of"] = int(first[0])
    return made


@pytest.fixture(scope="session")
def weights_cache() -> Path:
    """The ImageNet VGG16 weights converted once (no Spark: unit tests use them too). A cache:
    tests may add other backbones' weights to it."""
    from lookbook.features.backbones import resolve_weights

    return built_once("weights", lambda root: resolve_weights("vgg16", "imagenet", str(root)))


@pytest.fixture(scope="session")
def featured_build(spark, weights_cache) -> Path:
    """The shared catalogue (catalogue/, what it holds in made.json), ingested and featurized
    in-process (ImageNet VGG16, default settings) into warehouse/."""
    from lookbook.pipelines.catalogue_steps import ingest
    from lookbook.pipelines.feature_steps import featurize

    def build(root: Path) -> None:
        made = make_shared_catalogue(root / "catalogue")
        (root / "made.json").write_text(json.dumps(made))
        cfg = config_for(root / "catalogue", root / "warehouse", weights_cache)
        ingest(spark, cfg)
        featurize(spark, cfg)

    return built_once("featurized", build, read_only=("catalogue", "warehouse"))


@pytest.fixture(scope="session")
def catalogue(featured_build) -> tuple[Path, dict]:
    """The shared synthetic catalogue (read only: copy it to change it) and what it holds."""
    return featured_build / "catalogue", json.loads((featured_build / "made.json").read_text())


@pytest.fixture(scope="session")
def featurized(featured_build, weights_cache) -> Config:
    """The shared catalogue ingested and featurized. Read only: a test that writes any table
    works on a copy (`warehouse_copy`, `copy_warehouse`)."""
    return config_for(featured_build / "catalogue", featured_build / "warehouse", weights_cache)


@pytest.fixture
def warehouse_copy(featurized, tmp_path) -> Config:
    """A private copy of the featurized warehouse, for tests that write its tables."""
    return copy_warehouse(featurized, tmp_path / "warehouse")


@pytest.fixture(scope="session")
def pipeline_run(featured_build, weights_cache) -> tuple[str, Config]:
    """`./spark-submit.sh pipeline name=full` as a user runs it, on the shared catalogue into
    a new warehouse: its output and config. Read only: the e2e tests that refresh, serve or
    query it work on copies."""
    catalogue_dir = featured_build / "catalogue"

    def build(root: Path) -> None:
        # A relative data_dir, as users give it: params of the steps must not clash with config
        # keys.
        out = submit("pipeline", "name=full", *settings_for(
            os.path.relpath(catalogue_dir, REPO), root / "warehouse", weights_cache, *PIPELINE_SETTINGS))
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        (root / "output.txt").write_text(out.stdout)

    root = built_once("pipeline", build, read_only=("warehouse",))
    return ((root / "output.txt").read_text(),
            config_for(catalogue_dir, root / "warehouse", weights_cache, *PIPELINE_SETTINGS))
