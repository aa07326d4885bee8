"""Decode many images into one in-memory uint8 array, in parallel, with a rejects table.

Faces are small after cropping (e.g. 10k x 72 x 72 x 3 = 155 MB), so training and evaluation
decode each JPEG once instead of once per epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core.errors import ImageError
from pipeline.data.images import load_face
from pipeline.data.manifest import empty_rejects

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceArray:
    """Decoded faces.

    Attributes:
        images: uint8 (N, S, S, 3) for the N images that decoded.
        keep: int64 (N,) positions of those images in the input sequence.
        rejects: DataFrame (image_path, error) for the ones that did not.
    """

    images: np.ndarray
    keep: np.ndarray
    rejects: pd.DataFrame


def decode_faces(paths: Sequence[str | None], display_paths: Sequence[str] | None, crop_fraction: float, size_px: int,
                 *, threads: int | None = None, progress: Callable[[int], None] | None = None,
                 known_errors: Sequence[str | None] | None = None) -> FaceArray:
    """Decode ``paths`` (absolute) into a :class:`FaceArray`; ``display_paths`` name them in rejects.

    ``known_errors[i]``, when not None, rejects item i with that reason without opening it.
    """
    shown = list(display_paths) if display_paths is not None else list(paths)
    n = len(paths)
    out = np.zeros((n, size_px, size_px, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    errors: list[tuple[str, str]] = []

    def work(i: int) -> tuple[int, str | None]:
        p = paths[i]
        if known_errors is not None and isinstance(known_errors[i], str):
            return i, known_errors[i]
        if not isinstance(p, str) or not p:
            return i, "image path is empty or not valid UTF-8"
        try:
            out[i] = load_face(p, crop_fraction, size_px)
            return i, None
        except ImageError as exc:
            return i, exc.reason

    workers = threads or min(8, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, err in pool.map(work, range(n), chunksize=32):
            if err is None:
                ok[i] = True
            else:
                errors.append((shown[i], err))
                log.info("rejected %s: %s", shown[i], err)
            if progress is not None:
                progress(1)
    if errors:
        log.warning("%d of %d image(s) rejected (first: %s: %s)", len(errors), n, *errors[0])
    keep = np.flatnonzero(ok)
    rejects = pd.DataFrame(errors, columns=["image_path", "error"]) if errors else empty_rejects()
    images = out[keep] if len(keep) < n else out
    return FaceArray(images=images, keep=keep.astype(np.int64), rejects=rejects)


def decode_table(table: pd.DataFrame, crop_fraction: float, size_px: int, *,
                 progress: Callable[[int], None] | None = None) -> FaceArray:
    """Decode an image table (``abs_path``, ``image_path``, optional ``error``) into a :class:`FaceArray`."""
    errors = table["error"].tolist() if "error" in table.columns else None
    return decode_faces(table["abs_path"].tolist(), table["image_path"].tolist(), crop_fraction, size_px,
                        progress=progress, known_errors=errors)
