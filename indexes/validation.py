"""Input checks shared by the store's public methods. Each raises StoreError naming the bad value."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from indexes.errors import ModelVersionMismatch, StoreError

NORM_TOLERANCE = 1e-3
_CHECK_ROWS = 65536
UNKNOWN = "unknown"  # the open-set decision label; reserved, so it cannot be enrolled as an identity
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def check_model_version(path: Path, store_version: str, given: Any, action: str, model_path: str | None) -> None:
    """Refuse embeddings from another model, saying how to get a consistent store and model."""
    if not isinstance(given, str) or not given:
        raise StoreError(f"model_version must be a non-empty string (the version of the model that made the "
                         f"embeddings), got {given!r}")
    if given != store_version:
        where = f" (model_path recorded in the store: {model_path})" if model_path else ""
        raise ModelVersionMismatch(
            f"cannot {action}: the gallery store {path} holds embeddings of model_version {store_version!r} but the "
            f"embeddings given come from model_version {given!r}; scores across models are meaningless. Either "
            f"re-embed the gallery with model {given!r} into a new store (e.g. run the retrain flow, or "
            f"`facepipe enroll` with that model into a fresh --index), or use the model {store_version!r}{where} "
            "to embed the queries"
        )


def check_vectors(array: Any, dim: int, what: str) -> np.ndarray:
    """Validate L2-normalised float32 rows: [N, dim], finite, |norm - 1| <= 1e-3 -> C-contiguous copy-free view."""
    if not isinstance(array, np.ndarray):
        raise StoreError(f"{what} must be a numpy array of shape [N, {dim}], got {type(array).__name__}")
    if array.dtype != np.float32:
        raise StoreError(f"{what} must be float32, got {array.dtype}; convert with .astype(np.float32)")
    if array.ndim != 2 or array.shape[1] != dim:
        hint = "; for a single vector use v.reshape(1, -1)" if array.ndim == 1 else ""
        raise StoreError(f"{what} must have shape [N, {dim}] (the store's embedding_dim), got {array.shape}{hint}")
    array = np.ascontiguousarray(array)
    for start in range(0, array.shape[0], _CHECK_ROWS):  # chunked: no N x D temporaries
        chunk = array[start: start + _CHECK_ROWS]
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            total = int((~np.isfinite(array).all(axis=1)).sum())
            raise StoreError(f"{what} row {bad} contains NaN or inf ({total} such rows in total); "
                             "drop or re-embed those images")
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            first = int(np.flatnonzero(off)[0])
            raise StoreError(f"{what} row {start + first} has L2 norm {norms[first]:.6f}, not 1 within "
                             f"{NORM_TOLERANCE}; embeddings must be L2-normalised (divide each row by its norm; "
                             "a zero row means the embedding failed)")
    return array


def check_strings(values: Any, n: int, what: str) -> list[str]:
    """A sequence of n non-empty strings (not just whitespace)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise StoreError(f"{what} must be a sequence of {n} strings, got {type(values).__name__}")
    out = list(values)
    if len(out) != n:
        raise StoreError(f"{what} has {len(out)} values but there are {n} embeddings/queries")
    for i, value in enumerate(out):
        if not isinstance(value, str) or not value.strip():
            raise StoreError(f"{what}[{i}]={value!r} must be a non-empty string")
    return out


def check_identities(values: Any, n: int) -> list[str]:
    """Identity names: non-empty strings, not the reserved open-set label 'unknown'."""
    out = check_strings(values, n, "identities")
    for i, value in enumerate(out):
        if value == UNKNOWN:
            raise StoreError(f"identities[{i}]={value!r} is reserved for open-set rejection; rename that identity")
    return out


def check_sha256(values: Any, n: int) -> list[str]:
    """Hex sha256 digests (64 hex characters) -> lowercase."""
    out = check_strings(values, n, "image_sha256")
    for i, value in enumerate(out):
        if not _SHA256.fullmatch(value):
            raise StoreError(f"image_sha256[{i}]={value!r} is not a hex sha256 digest (64 hex characters); "
                             "use hashlib.sha256(image_bytes).hexdigest()")
    return [value.lower() for value in out]


def check_threshold(value: Any, what: str = "threshold") -> float:
    """A finite cosine threshold in [-1, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)) or not -1.0 <= float(value) <= 1.0:
        raise StoreError(f"{what}={value!r} must be a finite cosine similarity in [-1, 1]")
    return float(value)


def check_positive_int(value: Any, what: str) -> int:
    """An int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise StoreError(f"{what}={value!r} must be a positive integer")
    return int(value)
