"""Similarity alignment of a face to the canonical ArcFace 5-point template.

``warp_to_template(image, landmarks, 112)`` reproduces OpenCV's ``FaceRecognizerSF.alignCrop`` (same template,
Umeyama similarity, bilinear ``warpAffine`` with a black constant border), which the SFace teacher expects.
Other output sizes scale the template by ``size / 112``.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)

TEMPLATE_NAME = "arcface112"
TEMPLATE_SIZE = 112
#: float32 (5, 2): the ArcFace / InsightFace template for a 112x112 crop, landmark order as in ``detect``.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template_for_size(size: int) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop: float32 (5, 2)."""
    if size < 8:
        raise ConfigError(f"aligned crop size must be at least 8 px, got {size}")
    return (ARCFACE_TEMPLATE_112 * np.float32(size / TEMPLATE_SIZE)).astype(np.float32)


def umeyama(src: np.ndarray, dst: np.ndarray, *, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama 1991).

    Args:
        src: (N, 2) points, N >= 2.
        dst: (N, 2) points.
        estimate_scale: False fits a rigid transform (rotation + translation).
    Returns:
        float64 (2, 3) matrix ``M`` with ``dst ~= src @ M[:, :2].T + M[:, 2]``; never a reflection.
    Raises:
        ConfigError: shapes differ, fewer than two points, or the points are degenerate (all equal).
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.shape != d.shape or s.ndim != 2 or s.shape[1] != 2 or s.shape[0] < 2:
        raise ConfigError(f"umeyama needs two (N>=2, 2) point arrays of the same shape, got {s.shape} and {d.shape}")
    if not (np.isfinite(s).all() and np.isfinite(d).all()):
        raise ConfigError("umeyama got non-finite points")
    n = s.shape[0]
    mu_s, mu_d = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc**2).sum() / n
    if var_s <= 1e-12:
        raise ConfigError("umeyama: source points are all the same")
    cov = dc.T @ sc / n
    u, sig, vt = np.linalg.svd(cov)
    e = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[-1] = -1.0
    r = u @ np.diag(e) @ vt
    scale = float((sig * e).sum() / var_s) if estimate_scale else 1.0
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine ``matrix`` to (N, 2) ``points``; returns float64 (N, 2)."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def alignment_matrix(landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """float64 (2, 3) similarity taking image ``landmarks`` (5, 2) to the template of a ``size`` crop."""
    return umeyama(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template_for_size(size))


def warp_to_template(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Aligned ``size`` x ``size`` crop of ``image``.

    Args:
        image: uint8 (H, W, C) (any channel order; it is kept) or (H, W).
        landmarks: (5, 2) points in ``detect`` order, in ``image`` pixels.
        size: output side in px.
    Returns:
        uint8 (size, size, C): bilinear, black outside the image.
    """
    m = alignment_matrix(landmarks, size)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def resize_aligned(image: np.ndarray, size: int) -> np.ndarray:
    """An already aligned crop (template framing) resized to ``size`` x ``size``: uint8 (size, size, C)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)
