"""Face acceptance policy: which face is the subject, and whether its quality is good enough to enrol.

Enrolment mode rejects ambiguous or low-quality faces; query mode passes them, listing what it would have
rejected in ``flags``. Every reason names the measured value and the limit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pipeline.core.errors import ConfigError
from pipeline.faces.detect import Detection

log = logging.getLogger(__name__)


class Mode(StrEnum):
    """``ENROL`` rejects on ambiguity and quality; ``QUERY`` accepts any found face and flags problems."""

    ENROL = "enrol"
    QUERY = "query"


# Reject / flag codes (stable strings: they go into tables and logs).
NO_FACE = "no_face"
AMBIGUOUS = "ambiguous"
TOO_SMALL = "too_small"
LOW_SCORE = "low_score"
BLURRY = "blurry"
YAW = "yaw"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class FacePolicy:
    """Limits for accepting a face (defaults set on the shared LFW: enrolment rejects 1.4 % of its 9,912 photos,
    mostly |yaw| > 40 deg (0.9 %) and a second face near the subject's size (0.5 %)).

    Attributes:
        min_interocular_px: smallest eye distance in the input image (LFW: median 44, 0.1 % quantile 23).
        min_score: smallest detector score (YuNet on LFW: 99 % above 0.90).
        min_sharpness: smallest :func:`pipeline.faces.quality.sharpness` (LFW 0.1 % quantile 0.22; a Gaussian
            blur of sigma 3 px on a 250 px LFW photo gives a median of 0.13).
        max_abs_yaw_deg: largest |yaw| estimate in degrees (LFW: 99 % below 39).
        dominance_margin: with several faces, the subject's prominence must be at least this multiple of the
            next face's, else the image is ambiguous (LFW's tight crops put half-faces at the edges: 1.3).
        centrality_weight: prominence = sqrt(box area) * (1 - centrality_weight * d), d = distance of the box
            centre from the image centre divided by the half-diagonal (0 centre .. 1 corner).
    """

    min_interocular_px: float = 20.0
    min_score: float = 0.75
    min_sharpness: float = 0.15
    max_abs_yaw_deg: float = 40.0
    dominance_margin: float = 1.3
    centrality_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("min_interocular_px", "min_score", "min_sharpness", "max_abs_yaw_deg"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"FacePolicy.{name} must be a finite number >= 0, got {v!r}")
        if not 1.0 <= self.dominance_margin < math.inf:
            raise ConfigError(f"FacePolicy.dominance_margin must be >= 1, got {self.dominance_margin!r}")
        if not 0.0 <= self.centrality_weight < 1.0:
            raise ConfigError(f"FacePolicy.centrality_weight must be in [0, 1), got {self.centrality_weight!r}")


@dataclass(frozen=True)
class SubjectChoice:
    """Result of :func:`select_subject`.

    Attributes:
        index: position of the subject in the detections.
        prominence: one value per detection (see ``FacePolicy.centrality_weight``).
        dominance: subject prominence / next best (None with a single face).
        ambiguous: several faces and the subject does not beat the next by ``dominance_margin``.
    """

    index: int
    prominence: tuple[float, ...]
    dominance: float | None
    ambiguous: bool


def prominence(detection: Detection, image_shape: tuple[int, ...], centrality_weight: float) -> float:
    """Size times centrality of one face in an image of shape (H, W, ...)."""
    h, w = image_shape[:2]
    x, y, bw, bh = detection.box
    size = math.sqrt(max(bw, 0.0) * max(bh, 0.0))
    cx, cy = x + bw / 2.0, y + bh / 2.0
    half_diag = math.hypot(w / 2.0, h / 2.0) or 1.0
    d = min(1.0, math.hypot(cx - w / 2.0, cy - h / 2.0) / half_diag)
    return size * (1.0 - centrality_weight * d)


def select_subject(detections: Sequence[Detection], image_shape: tuple[int, ...], policy: FacePolicy) -> SubjectChoice:
    """Pick the subject: the most prominent face (largest, most central).

    Raises:
        ConfigError: ``detections`` is empty.
    """
    if not detections:
        raise ConfigError("select_subject needs at least one detection")
    prom = tuple(prominence(d, image_shape, policy.centrality_weight) for d in detections)
    order = sorted(range(len(prom)), key=lambda i: -prom[i])
    best = order[0]
    if len(order) == 1:
        return SubjectChoice(best, prom, None, False)
    second = prom[order[1]]
    dominance = prom[best] / second if second > 0 else math.inf
    return SubjectChoice(best, prom, dominance, dominance < policy.dominance_margin)


def ambiguity_reason(choice: SubjectChoice, policy: FacePolicy) -> str:
    """Human-readable reason for an ambiguous choice."""
    n = len(choice.prominence)
    return (f"{AMBIGUOUS}: {n} faces, the most prominent beats the next by x{choice.dominance:.2f} "
            f"< dominance_margin x{policy.dominance_margin:.2f}")


def quality_failures(quality: dict[str, float], policy: FacePolicy) -> list[tuple[str, str]]:
    """Every limit that ``quality`` (from :func:`pipeline.faces.quality.measure`) breaks, as (code, reason)."""
    out: list[tuple[str, str]] = []
    if "interocular_px" in quality and quality["interocular_px"] < policy.min_interocular_px:
        out.append((TOO_SMALL, f"{TOO_SMALL}: interocular distance {quality['interocular_px']:.1f} px "
                               f"< min_interocular_px {policy.min_interocular_px:g}"))
    if "score" in quality and quality["score"] < policy.min_score:
        out.append((LOW_SCORE,
                    f"{LOW_SCORE}: detection score {quality['score']:.3f} < min_score {policy.min_score:g}"))
    if "sharpness" in quality and quality["sharpness"] < policy.min_sharpness:
        out.append((BLURRY, f"{BLURRY}: sharpness {quality['sharpness']:.3f} < min_sharpness {policy.min_sharpness:g}"))
    if "yaw_deg" in quality and abs(quality["yaw_deg"]) > policy.max_abs_yaw_deg:
        out.append((YAW,
                    f"{YAW}: |yaw| {abs(quality['yaw_deg']):.1f} deg > max_abs_yaw_deg {policy.max_abs_yaw_deg:g}"))
    return out


def face_policy(pairs: Sequence[str]) -> FacePolicy:
    """A FacePolicy from ``KEY=VALUE`` strings (the others at their defaults); a bad key or value is a ConfigError
    naming it and the valid keys."""
    names = [f.name for f in dataclasses.fields(FacePolicy)]
    values: dict[str, float] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ConfigError(f"face policy {pair!r}: expected KEY=VALUE with KEY one of {names}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ConfigError(f"face policy {pair!r}: {raw!r} is not a number") from None
    return FacePolicy(**values)
