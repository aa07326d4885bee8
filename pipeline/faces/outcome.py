"""The result of aligning one image: an accepted aligned crop, or a reject with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.faces.detect import Detection


@dataclass(frozen=True, eq=False)
class FaceOutcome:
    """What :class:`pipeline.faces.aligner.FaceAligner` made of one image.

    Attributes:
        accepted: True when ``crop`` holds the subject's aligned face.
        crop: uint8 (S, S, 3) RGB aligned crop when accepted, else None.
        detection: the subject's detection (input-image pixels); None when no face was found or the input was
            already aligned.
        quality: ``interocular_px``, ``face_width_px``, ``score``, ``sharpness``, ``yaw_deg``, ``roll_deg`` and,
            with several faces, ``dominance`` (only ``sharpness`` for already-aligned input).
        faces_found: number of detections (1 for already-aligned input, 0 when unreadable).
        mode: ``"enrol"`` or ``"query"``.
        reject_code: None when accepted, else one of the codes in :mod:`pipeline.faces.policy`.
        reject_reason: None when accepted, else e.g. ``"too_small: interocular distance 14.2 px < ..."``.
        flags: query mode: the codes that enrolment would have rejected on (accepted anyway).
        source: the path, for inputs given as paths.
    """

    accepted: bool
    crop: np.ndarray | None
    detection: Detection | None
    quality: dict[str, float] = field(default_factory=dict)
    faces_found: int = 0
    mode: str = "enrol"
    reject_code: str | None = None
    reject_reason: str | None = None
    flags: tuple[str, ...] = ()
    source: str | None = None
