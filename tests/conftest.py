"""Shared fixtures: one local SparkSession, the catalogues, and one featurized warehouse that
every test needing features shares (ingested and featurized once per session).

Markers (pytest.ini) are set here from the fixtures a test uses: `spark`, `real_data`, and
`slow` for tests that need a trained model; tests that run a whole job or build every backbone
mark themselves slow.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from lookbook.config import Config, SparkSettings, TensorflowSettings, load_config
from lookbook.io.synthetic import make_catalogue
from lookbook.session import build_spark

REPO = Path(__file__).resolve().parents[1]
# Every JVM the tests start (spark-submit jobs, a cluster, beeline, notebooks' sessions) runs
# for seconds to minutes on 2 cores: C2 compilation costs more CPU than it saves (the cluster
# test: 488 s -> 250 s with this and its own settings).
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")
# A product added to the shared catalogue with the same image bytes as the first product.
DUPLICATE_ID = 999_001


def free_port() -> int:
    """A loopback port nothing listens on now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_data_dir() -> Path:
    return Path(os.environ.get("LOOKBOOK_REAL_DATA", REPO.parent / "shared" / "data" / "fashion"))


def pytest_collection_modifyitems(items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "spark" in names:
            item.add_marker(pytest.mark.spark)
        if "real_data" in names:
            item.add_marker(pytest.mark.real_data)
        if "trained" in names:
            item.add_marker(pytest.mark.slow)
    # Files with slow tests first (in file order otherwise): with two workers (`make test`,
    # a file at a time each, in this order), a long file taken last runs alone at the end.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


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
    201 s -> 167 s). Kept in ~/.cache/lookbook/jvm per Java and Spark version. A JVM whose class
    path differs (spark-submit's launcher, a cluster's daemons) ignores it, silently (cds
    logging off)."""
    import hashlib

    import pyspark

    if "SharedArchiveFile" in os.environ.get("JAVA_TOOL_OPTIONS", ""):
        return
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    key = hashlib.sha256(f"{java}{pyspark.__file__}{pyspark.__version__}".encode()).hexdigest()
    archive = Path.home() / ".cache" / "lookbook" / "jvm" / f"spark-classes-{key[:16]}.jsa"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="lookbook-jvm-archive-"))
        dumped = archive.with_name(f".{os.getpid()}.{archive.name}")  # renamed when complete
        env = {**os.environ, "PYSPARK_SUBMIT_ARGS":
               f'--driver-java-options "-XX:ArchiveClassesAtExit={dumped}" pyspark-shell'}
        try:
            done = subprocess.run([sys.executable, "-c", CLASS_ARCHIVE_WORKLOAD,
                                   str(work / "table")],
                                  capture_output=True, text=True, env=env, timeout=300)
            if done.returncode != 0 or not dumped.exists():
                warnings.warn("no JVM class archive (JVMs start as before): "
                              f"{done.stderr[-1000:]}", stacklevel=1)
                return
            os.replace(dumped, archive)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            dumped.unlink(missing_ok=True)  # a partial archive of a failed dump
    os.environ["JAVA_TOOL_OPTIONS"] += (f" -XX:SharedArchiveFile={archive}"
                                        " -Xlog:cds=off -Xlog:cds+dynamic=off")


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
                      # `make test-fast`).
                      conf={"spark.ui.enabled": "false"}),
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


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> Path:
    """A fresh weights cache: the offline VGG16 conversion runs once per session, here."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> tuple[Path, dict]:
    """The shared synthetic catalogue: every class, bad inputs, and product DUPLICATE_ID
    whose image has the same bytes as the first product's."""
    root = tmp_path_factory.mktemp("catalogue")
    made = make_catalogue(root, scale=2, seed=7, bad_inputs=True)
    lines = (root / "styles.csv").read_text().splitlines()
    first = lines[1].split(",")
    lines.append(",".join([str(DUPLICATE_ID)] + first[1:]))
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    shutil.copy(root / "images" / f"{first[0]}.jpg", root / "images" / f"{DUPLICATE_ID}.jpg")
    made["product_ids"] = sorted(made["product_ids"] + [DUPLICATE_ID])
    made["duplicate_of"] = int(first[0])
    return root, made


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


def config_for(catalogue_dir: Path, warehouse: Path, weights: Path, *overrides: str) -> Config:
    # fp32 whatever the CPU (the default, auto, is bf16 on some): tests compare features with
    # fp32 Keras; test_featurize covers auto.
    return load_config(None, [f"data_dir={catalogue_dir}", f"warehouse={warehouse}",
                              f"featurize.weights_cache={weights}", "featurize.precision=fp32",
                              *overrides])


@pytest.fixture(scope="session")
def featurized(spark, catalogue, weights_cache, tmp_path_factory) -> Config:
    """The shared catalogue ingested and featurized (ImageNet VGG16, default settings).
    Tests may add tables (train, neighbours) but must not change `products` or `features`:
    a test that needs to, works on a copy (`warehouse_copy`)."""
    from lookbook.pipelines.catalogue_steps import ingest
    from lookbook.pipelines.feature_steps import featurize

    cfg = config_for(catalogue[0], tmp_path_factory.mktemp("warehouse"), weights_cache)
    ingest(spark, cfg)
    featurize(spark, cfg)
    return cfg


@pytest.fixture
def warehouse_copy(featurized, tmp_path) -> Config:
    """A private copy of the featurized warehouse, for tests that rewrite its tables."""
    copy = tmp_path / "warehouse"
    shutil.copytree(featurized.warehouse, copy)
    return config_for(Path(featurized.data_dir), copy, Path(featurized.featurize.weights_cache))
