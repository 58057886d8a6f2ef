"""Shared fixtures: one local SparkSession for all Spark tests, catalogues to ingest."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lookbook.config import SparkSettings, TensorflowSettings
from lookbook.session import build_spark
from lookbook.synthetic import make_catalogue

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    return Path(os.environ.get("LOOKBOOK_REAL_DATA", REPO.parent / "shared" / "data" / "fashion"))


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
                      shuffle_partitions=4),
        TensorflowSettings())
    yield session
    session.stop()


@pytest.fixture(scope="session")
def bad_catalogue(tmp_path_factory) -> tuple[Path, dict]:
    """Synthetic catalogue with every kind of bad input, and what the ingest should make of it."""
    root = tmp_path_factory.mktemp("bad_catalogue")
    return root, make_catalogue(root, bad_inputs=True)
