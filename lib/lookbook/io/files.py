"""Files on the driver's disk that executor code needs (feature weights, the saved
classifier): shipped with `SparkContext.addFile` under a name that follows their content, and
opened on the executors with `SparkFiles.get(name)`. An executor on another machine (or in
another container) cannot open the driver's paths."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pyspark.sql import SparkSession


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ship_file(spark: SparkSession, path: Path) -> str:
    """Add `path`'s content to the session's files once; the name for `SparkFiles.get`."""
    named = content_named(Path(path).absolute(), sha256_of(path))
    sc = spark.sparkContext
    # A second addFile of the same path only warns; skip it.
    if not any(shipped.endswith("/" + named.name) for shipped in sc.listFiles):
        sc.addFile(str(named))
    return named.name


def content_named(path: Path, digest: str) -> Path:
    """A hard link (or copy) of `path` beside it, named after its content (`digest`, its
    sha256). Spark keeps files added with addFile by name for the whole session and fails
    every later task when one name arrives with other bytes (the same weights converted in
    another cache, two models' model.keras, say)."""
    named = path.with_name(f"{digest[:16]}-{path.name}")
    if not named.exists():
        partial = named.with_name(f".{os.getpid()}.{named.name}")
        try:
            os.link(path, partial)
        except OSError:  # another filesystem, or no hard links
            shutil.copyfile(path, partial)
        os.replace(partial, named)
    return named
