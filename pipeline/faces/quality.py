"""Face quality measures: size, detector score, sharpness of the aligned crop, yaw and roll from landmarks.

All measures are plain floats so they go straight into a quality dict, a table or JSON.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from pipeline.faces.align import TEMPLATE_SIZE
from pipeline.faces.detect import Detection

log = logging.getLogger(__name__)

#: Depth of the nose tip in front of the eye plane, as a fraction of the inter-ocular distance (adult average,
#: ~35 mm for ~63 mm). Only used to turn the nose offset into an approximate yaw angle.
NOSE_DEPTH_RATIO = 0.55

#: Region of the 112 px aligned crop used for sharpness (rows, cols): the face inside the template,
#: away from the black border that warping leaves at the crop edges.
_SHARP_ROWS = slice(24, 104)
_SHARP_COLS = slice(20, 92)
#: Laplacian variance of 8-bit rounding noise alone (3x3 kernel gain 20 x 1/12), subtracted first.
_LAPLACE_NOISE_FLOOR = 2.0
#: Added to the grey variance so that a nearly flat crop (std < ~5) does not read as sharp.
_CONTRAST_FLOOR = 25.0


def interocular_px(landmarks: np.ndarray) -> float:
    """Distance in pixels between the two eye landmarks of a (5, 2) array."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return float(np.hypot(*(lm[1] - lm[0])))


def roll_deg(landmarks: np.ndarray) -> float:
    """In-plane angle of the eye line in degrees (0 = level; positive = subject's left eye lower in the image)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    dx, dy = lm[1] - lm[0]
    return float(math.degrees(math.atan2(dy, dx)))


def yaw_ratio(landmarks: np.ndarray) -> float:
    """Offset of the nose tip from the eye midpoint along the eye line, divided by the inter-ocular distance.

    0 for a frontal face, positive when the nose points to the image right. Invariant to roll and scale.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    axis = lm[1] - lm[0]
    iod = float(np.hypot(*axis))
    if iod <= 1e-9:
        return 0.0
    mid = (lm[0] + lm[1]) / 2.0
    return float(np.dot(lm[2] - mid, axis / iod) / iod)


def yaw_deg(landmarks: np.ndarray) -> float:
    """Approximate yaw in degrees from the landmarks (coarse: +-10 degrees; saturates near profile).

    Orthographic model: eyes at +-d/2 on the face plane, nose tip ``NOSE_DEPTH_RATIO * d`` in front of it,
    so ``yaw_ratio = NOSE_DEPTH_RATIO * tan(yaw)``. Sign: positive when the nose points to the image right.
    """
    return float(math.degrees(math.atan2(yaw_ratio(landmarks), NOSE_DEPTH_RATIO)))


def sharpness(aligned: np.ndarray) -> float:
    """Contrast-normalised sharpness of an aligned face crop.

    Variance of the Laplacian of the grey face region (less 8-bit rounding noise) divided by the grey variance
    plus a small floor, so that low contrast alone does not read as blur and a featureless crop reads as 0.
    Measured at the 112 px template scale (other crop sizes are resized first). On LFW (250 px photos, faces
    ~95 px wide): sharp photos median ~1.3, 0.1 % quantile ~0.2; a Gaussian blur of sigma 3 px brings the median
    to ~0.12.

    Args:
        aligned: uint8 (S, S, 3) or (S, S) aligned crop.
    """
    img = np.asarray(aligned)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    if img.shape[:2] != (TEMPLATE_SIZE, TEMPLATE_SIZE):
        interp = cv2.INTER_AREA if img.shape[0] > TEMPLATE_SIZE else cv2.INTER_LINEAR
        img = cv2.resize(img, (TEMPLATE_SIZE, TEMPLATE_SIZE), interpolation=interp)
    g = img[_SHARP_ROWS, _SHARP_COLS].astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F, ksize=3)
    return float(max(float(lap.var()) - _LAPLACE_NOISE_FLOOR, 0.0) / (float(g.var()) + _CONTRAST_FLOOR))


def measure(detection: Detection, aligned: np.ndarray) -> dict[str, float]:
    """The quality dict of one face.

    Returns:
        ``interocular_px``, ``face_width_px`` (box width), ``score``, ``sharpness``, ``yaw_deg``, ``roll_deg``.
    """
    lm = detection.landmarks
    return {
        "interocular_px": round(interocular_px(lm), 3),
        "face_width_px": round(float(detection.box[2]), 3),
        "score": round(float(detection.score), 5),
        "sharpness": round(sharpness(aligned), 5),
        "yaw_deg": round(yaw_deg(lm), 2),
        "roll_deg": round(roll_deg(lm), 2),
    }
