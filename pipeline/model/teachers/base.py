"""The teacher interface for distillation: a frozen face model from aligned crops to unit-length embeddings.

A teacher maps aligned faces -- uint8 (N, 112, 112, 3) RGB crops framed by the ArcFace 5-point template, i.e.
what :mod:`pipeline.faces.align` makes -- to float32 (N, D) L2-normalised embeddings. It never trains.

Its identity is ``version``: the name plus the sha256 of every weight file (and of its preprocessing recipe when
that can change), so the embedding cache (:mod:`pipeline.model.teachers.cache`) recomputes whenever the
teacher could answer differently. ``spec()`` rebuilds the same teacher in another process, for models (OpenCV,
dlib) that cannot be pickled.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError, DataError, ModelArtifactError

CROP_SIZE = 112
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

#: name -> "module:Class" (imported lazily, so a teacher's library -- cv2, dlib -- is needed only when used)
#: or a factory callable.
_REGISTRY: dict[str, str | Callable[..., Teacher]] = {
    "sface": "pipeline.model.teachers.sface:SFaceTeacher",
    "dlib": "pipeline.model.teachers.dlib:DlibTeacher",
    "precomputed": "pipeline.model.teachers.precomputed:PrecomputedTeacher",
}


def check_crops(crops: Any) -> np.ndarray:
    """Return ``crops`` as a C-contiguous uint8 (N, 112, 112, 3) array.

    Raises:
        DataError: not an array of that dtype and shape (the message gives what was received).
    """
    if not isinstance(crops, np.ndarray):
        raise DataError(f"teacher input must be a numpy array of aligned crops, got {type(crops).__name__}")
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise DataError(f"teacher input must be uint8 (N, {CROP_SIZE}, {CROP_SIZE}, 3) RGB aligned crops, "
                        f"got {crops.dtype} {crops.shape}")
    return np.ascontiguousarray(crops)


def check_sha256s(sha256s: Sequence[str]) -> list[str]:
    """Return ``sha256s`` as a list of lowercase 64-hex strings.

    Raises:
        DataError: one is not a sha256 hex digest (the message names the first bad one and its position).
    """
    if isinstance(sha256s, str):
        raise DataError("expected a sequence of image sha256 strings, got one string")
    out = []
    for i, s in enumerate(sha256s):
        v = s.lower() if isinstance(s, str) else s
        if not isinstance(v, str) or not _SHA256_RE.match(v):
            raise DataError(f"image_sha256 #{i} is not a 64-hex sha256 digest: {s!r}")
        out.append(v)
    return out


def l2_normalise(x: np.ndarray, *, what: str) -> np.ndarray:
    """Row-normalise float embeddings to unit length (float32).

    Raises:
        ModelArtifactError: a row is non-finite or all zeros (``what`` names the teacher in the message).
    """
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] < 1e-12)
    if bad.any():
        raise ModelArtifactError(f"{what} produced {int(bad.sum())} non-finite or zero embedding(s) "
                                 f"(first at row {int(np.flatnonzero(bad)[0])})")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def files_digest(files: dict[str, str]) -> str:
    """sha256 over ``name=sha256`` lines of several files (sorted by name)."""
    text = "".join(f"{k}={v}\n" for k, v in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


class Teacher(ABC):
    """A frozen face model: aligned crops -> float32 L2-normalised (N, ``embedding_dim``) embeddings.

    Attributes:
        name: registry name (``create_teacher(name)``).
        embedding_dim: D.
        licence: licence of the weights (SPDX id where there is one).
        files: {file name: sha256} of the weight files, each checked at load.
        needs_crops: False for teachers that look embeddings up by image sha256 (``precomputed``).
    """

    name: str
    embedding_dim: int
    licence: str
    files: dict[str, str]
    needs_crops: bool = True

    @property
    def recipe(self) -> str:
        """Preprocessing that is part of the teacher (e.g. dlib's chip extraction); '' when none."""
        return ""

    @property
    def version(self) -> str:
        """``"<name>:<file>@sha256:<hex>"`` for one weight file, ``"<name>@sha256:<digest of all>"`` for several,
        with ``"+<recipe>"`` appended when the teacher has a preprocessing recipe."""
        if len(self.files) == 1:
            (fname, digest), = self.files.items()
            v = f"{self.name}:{fname}@sha256:{digest}"
        else:
            v = f"{self.name}@sha256:{files_digest(self.files)}"
        return f"{v}+{self.recipe}" if self.recipe else v

    @abstractmethod
    def spec(self) -> tuple[str, dict[str, Any]]:
        """``(name, options)`` such that ``create_teacher(name, **options)`` rebuilds this teacher elsewhere."""

    @abstractmethod
    def _embed_raw(self, crops: np.ndarray) -> np.ndarray:
        """Raw float (N, D) features of checked uint8 (N, 112, 112, 3) RGB crops."""

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed aligned crops.

        Args:
            crops: uint8 (N, 112, 112, 3) RGB, ArcFace-template aligned (``pipeline.faces`` crops).
        Returns:
            float32 (N, D), each row of unit L2 norm.
        Raises:
            DataError: wrong input dtype/shape.
            ModelArtifactError: the model produced a non-finite or zero embedding.
        """
        crops = check_crops(crops)
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        raw = np.asarray(self._embed_raw(crops))
        if raw.shape != (len(crops), self.embedding_dim):
            raise ModelArtifactError(f"teacher {self.name} returned shape {raw.shape}, "
                                     f"expected {(len(crops), self.embedding_dim)}")
        return l2_normalise(raw, what=f"teacher {self.name}")

    def embed_keyed(self, sha256s: Sequence[str], crops: np.ndarray | None = None) -> np.ndarray:
        """Embeddings for images named by sha256; model teachers embed ``crops`` (same order, required)."""
        if crops is None:
            raise ConfigError(f"teacher {self.name} needs the aligned crops of the images, not only their sha256")
        if len(crops) != len(sha256s):
            raise DataError(f"{len(sha256s)} sha256s but {len(crops)} crops")
        return self.embed(crops)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version!r}, dim={self.embedding_dim})"


def register_teacher(name: str, factory: str | Callable[..., Teacher]) -> None:
    """Make ``create_teacher(name, **options)`` call ``factory(**options)`` (``"module:Class"`` or a callable).

    Worker processes of the cache rebuild teachers by name: register before they start (they inherit the
    registry under ``fork``; under ``spawn`` register at import time of a module they import).
    """
    if not name or not isinstance(name, str):
        raise ConfigError(f"teacher name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def available_teachers() -> list[str]:
    """Registered teacher names, sorted."""
    return sorted(_REGISTRY)


def create_teacher(name: str, **options: Any) -> Teacher:
    """Build the teacher registered as ``name`` (``"sface"``, ``"dlib"``, ``"precomputed"``).

    Raises:
        ConfigError: unknown name (the message lists the valid ones) or bad options.
        ModelArtifactError: weights missing, their package not installed, or a hash mismatch.
    """
    try:
        target = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown teacher {name!r}; valid: {', '.join(available_teachers())}") from None
    if isinstance(target, str):
        module_name, cls_name = target.split(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
    else:
        cls = target
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for teacher {name!r}: {exc}") from None
    return cls(**options)
