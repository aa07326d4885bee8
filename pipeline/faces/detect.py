"""Face detection with five landmarks: the ``FaceDetector`` protocol, YuNet, and a registry of detectors.

Landmark order (shared with YuNet and the ArcFace template in :mod:`pipeline.faces.align`), in image
coordinates (x right, y down), for a frontal upright face:

    0 right eye of the subject   (appears on the LEFT of the image)
    1 left eye of the subject    (appears on the RIGHT of the image)
    2 nose tip
    3 right mouth corner of the subject (image left)
    4 left mouth corner of the subject  (image right)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from pipeline.core.errors import ConfigError, ImageError
from pipeline.faces.weights import MODEL_FILES, model_path, verify_file

log = logging.getLogger(__name__)

LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth")


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected face, in the coordinates of the image given to ``detect``.

    Attributes:
        box: (x, y, w, h) floats, top-left corner and size in pixels.
        landmarks: float32 (5, 2) array of (x, y) points in :data:`LANDMARK_NAMES` order.
        score: detector confidence in [0, 1].
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in pixels."""
        x, y, w, h = self.box
        return x + w / 2.0, y + h / 2.0


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces with five landmarks in an RGB image."""

    @property
    def name(self) -> str:
        """Registry name, e.g. ``"yunet"``."""
        ...

    @property
    def version(self) -> str:
        """Name plus the sha256 of the weights: changes whenever detections can change."""
        ...

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Find faces in ``image`` (uint8 (H, W, 3) RGB); best score first."""
        ...


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check an image array and return it as C-contiguous uint8 (H, W, 3) RGB (grey is stacked).

    Raises:
        ImageError: wrong dtype, shape or empty.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError("<array>", f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError("<array>", f"expected dtype uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError("<array>", f"expected shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("<array>", f"image has no pixels {image.shape}")
    return np.ascontiguousarray(image)


class YuNetDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``), 2023mar int8 block-quantised, from the pinned bundled file.

    Small images are upscaled so that their shorter side reaches ``min_side`` and large ones downscaled so
    that their longer side is at most ``max_side`` before detection; coordinates are mapped back to the
    input image. Thread-safe: each thread gets its own OpenCV detector (they hold per-size state).
    OpenCV's thread count is process-wide and is not changed here (see ``FaceAligner``'s ``cv_threads``).

    Known limitation: on in-plane rotated faces the landmarks' eye line turns by only ~0.3-0.5 of the true
    rotation (LFW photos rotated 10/20/30 deg: mean roll error ~4/7/11 deg). Re-detecting on upright patches did
    not help reliably (YuNet's landmark roll is nearly insensitive near level), so it is not done.

    Args:
        score_threshold: minimum YuNet score kept.
        nms_threshold: IoU for YuNet's non-maximum suppression.
        min_side: upscale images whose shorter side is below this (px).
        max_side: downscale images whose longer side is above this (px).
        coarse_min_side: when the detection image's shorter side is at least this, a second pass at half size
            adds faces the first missed (IoU < 0.3 with all of them): large and soft faces; 0 disables.
        pad_fraction: constant (mean-colour) border added on each side of images whose shorter side is below
            ``min_side``, as a fraction of that side: a face that fills the frame is found more reliably.
        model_path: override the bundled file (it must still match ``expected_sha256``).
        expected_sha256: the pinned hash of the weights.
    """

    name = "yunet"

    def __init__(self, *, score_threshold: float = 0.6, nms_threshold: float = 0.3, min_side: int = 160,
                 max_side: int = 1280, pad_fraction: float = 0.25, top_k: int = 200, coarse_min_side: int = 480,
                 model_path: str | os.PathLike[str] | None = None, expected_sha256: str | None = None) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"yunet score_threshold must be in [0, 1], got {score_threshold}")
        if coarse_min_side < 0:
            raise ConfigError(f"yunet coarse_min_side must be >= 0 (0 disables), got {coarse_min_side}")
        if min_side < 32 or max_side < min_side:
            raise ConfigError(f"yunet needs 32 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
        entry = MODEL_FILES["yunet"]
        expected = (expected_sha256 or entry.sha256).lower()
        if model_path is None and expected == entry.sha256:
            self.model_path = _yunet_path()
            self.sha256 = entry.sha256
        else:
            self.model_path = Path(model_path) if model_path is not None else _yunet_path()
            self.sha256 = verify_file(self.model_path, expected)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.min_side, self.max_side = int(min_side), int(max_side)
        self.pad_fraction = float(pad_fraction)
        self.top_k = int(top_k)
        self.coarse_min_side = int(coarse_min_side)
        self._local = threading.local()

    @property
    def version(self) -> str:
        """``"yunet:<filename>@sha256:<hex>"``."""
        return f"{self.name}:{self.model_path.name}@sha256:{self.sha256}"

    def _cv(self) -> Any:
        det = getattr(self._local, "det", None)
        if det is None:
            det = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), self.score_threshold,
                                            self.nms_threshold, self.top_k)
            self._local.det = det
        return det

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Find faces in ``image``.

        Args:
            image: uint8 (H, W, 3) RGB (also accepted: (H, W) or (H, W, 1) grey).
        Returns:
            Detections in input-image pixels, highest score first (empty when none).
        Raises:
            ImageError: the array is not an image.
        """
        rgb = as_rgb_uint8(image)
        h, w = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        scale = 1.0
        pad = 0
        if min(h, w) < self.min_side:
            scale = self.min_side / min(h, w)
            if max(h, w) * scale > self.max_side:  # extreme aspect ratio: keep within max_side
                scale = max(1.0, self.max_side / max(h, w))
        elif max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            interp = cv2.INTER_LINEAR if scale > 1.0 else cv2.INTER_AREA
            work = cv2.resize(bgr, size, interpolation=interp)
        else:
            work = bgr
        if min(h, w) < self.min_side and self.pad_fraction > 0:
            pad = int(round(min(work.shape[:2]) * self.pad_fraction))
            fill = [float(v) for v in work.reshape(-1, 3).mean(axis=0)]
            work = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill)
        rows = self._run(work)
        if self.coarse_min_side and min(work.shape[:2]) >= self.coarse_min_side:
            # second pass at half size: very large (or blurred large) faces exceed YuNet's best range
            half = cv2.resize(work, (work.shape[1] // 2, work.shape[0] // 2), interpolation=cv2.INTER_AREA)
            fx, fy = work.shape[1] / half.shape[1], work.shape[0] / half.shape[0]
            for r in self._run(half):
                r = r.copy()
                r[0:14:2] *= fx
                r[1:14:2] *= fy
                if all(_iou(r[:4], q[:4]) < 0.3 for q in rows):
                    rows.append(r)
        sx = w / (work.shape[1] - 2 * pad)
        sy = h / (work.shape[0] - 2 * pad)
        out: list[Detection] = []
        for row in rows:
            x, y, bw, bh = row[:4]
            if bw <= 1 or bh <= 1:
                continue
            lm = row[4:14].reshape(5, 2).copy()
            lm[:, 0] = (lm[:, 0] - pad) * sx
            lm[:, 1] = (lm[:, 1] - pad) * sy
            box = ((x - pad) * sx, (y - pad) * sy, bw * sx, bh * sy)
            out.append(Detection(box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                                 landmarks=lm.astype(np.float32), score=float(row[14])))
        out.sort(key=lambda d: -d.score)
        return out

    def _run(self, work_bgr: np.ndarray) -> list[np.ndarray]:
        """YuNet rows (x, y, w, h, 10 landmark coords, score) as float64 (15,) arrays, in ``work_bgr`` pixels."""
        det = self._cv()
        det.setInputSize((work_bgr.shape[1], work_bgr.shape[0]))
        _, raw = det.detect(work_bgr)
        if raw is None or len(raw) == 0:
            return []
        return [r for r in np.asarray(raw, dtype=np.float64)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def _yunet_path() -> Path:
    return model_path("yunet")


DetectorFactory = Callable[..., FaceDetector]
_REGISTRY: dict[str, DetectorFactory] = {"yunet": YuNetDetector}


def register_detector(name: str, factory: DetectorFactory) -> None:
    """Make ``create_detector(name, **options)`` call ``factory(**options)`` (replaces an existing name)."""
    if not name or not isinstance(name, str):
        raise ConfigError(f"detector name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def available_detectors() -> list[str]:
    """Registered detector names, sorted."""
    return sorted(_REGISTRY)


def create_detector(name: str = "yunet", **options: Any) -> FaceDetector:
    """Build the detector registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the valid ones) or bad options.
        ModelArtifactError: its weights are missing or fail their hash check.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown face detector {name!r}; valid: {', '.join(available_detectors())}") from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for face detector {name!r}: {exc}") from exc
