"""``FaceAligner``: detect, pick the subject, align to the ArcFace template and measure quality, per image or batch.

Takes decoded RGB arrays; paths are decoded with :func:`pipeline.data.images.decode_image` (a decode failure
becomes an ``unreadable`` reject, the batch goes on).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.core.errors import ConfigError, ImageError
from pipeline.faces.align import TEMPLATE_NAME, resize_aligned, warp_to_template
from pipeline.faces.detect import FaceDetector, as_rgb_uint8, create_detector
from pipeline.faces.outcome import FaceOutcome
from pipeline.faces.policy import (
    AMBIGUOUS,
    NO_FACE,
    UNREADABLE,
    FacePolicy,
    Mode,
    ambiguity_reason,
    quality_failures,
    select_subject,
)
from pipeline.faces.quality import measure, sharpness

log = logging.getLogger(__name__)

ImageInput = np.ndarray | str | os.PathLike[str]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class AlignerConfig:
    """How to find and align faces.

    Attributes:
        detector: registry name (see :func:`pipeline.faces.detect.available_detectors`).
        detector_options: keyword options for the detector factory (e.g. ``score_threshold``).
        size_px: side of the aligned crop; the 112 px ArcFace template is scaled to it.
        policy: acceptance limits.
        mode: default mode of ``align_image`` / ``align_batch``.
        cv_threads: OpenCV threads, set process-wide when the aligner is built (None leaves OpenCV alone).
            1 is as fast as 2 for one 250 px photo here and leaves the cores to ``align_batch``'s workers.
        workers: ``align_batch`` threads (None: the available cores).
    """

    detector: str = "yunet"
    detector_options: Mapping[str, Any] = field(default_factory=dict)
    size_px: int = 112
    policy: FacePolicy = field(default_factory=FacePolicy)
    mode: Mode = Mode.ENROL
    cv_threads: int | None = 1
    workers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size_px, int) or not 16 <= self.size_px <= 1024:
            raise ConfigError(f"aligner size_px must be an int in [16, 1024], got {self.size_px!r}")
        try:
            object.__setattr__(self, "mode", Mode(self.mode))
        except ValueError:
            raise ConfigError(f"aligner mode must be one of {[m.value for m in Mode]}, got {self.mode!r}") from None
        if self.cv_threads is not None and self.cv_threads < 1:
            raise ConfigError(f"aligner cv_threads must be >= 1 or None, got {self.cv_threads}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"aligner workers must be >= 1 or None, got {self.workers}")


class FaceAligner:
    """Detect + select + align + measure.

    Args:
        config: the settings (defaults: YuNet, 112 px, default policy, enrolment mode).
        detector: an already built detector to use instead of ``config.detector`` (must be thread-safe for
            ``align_batch``).
    """

    def __init__(self, config: AlignerConfig | None = None, *, detector: FaceDetector | None = None) -> None:
        self.config = config or AlignerConfig()
        self.detector: FaceDetector = detector or create_detector(self.config.detector,
                                                                  **dict(self.config.detector_options))
        if self.config.cv_threads is not None:
            cv2.setNumThreads(self.config.cv_threads)
            log.debug("cv2.setNumThreads(%d) (process-wide)", self.config.cv_threads)

    @property
    def version(self) -> str:
        """Changes whenever the crops can change: detector + weights hash + template + crop size."""
        return f"{self.detector.version};template={TEMPLATE_NAME};size={self.config.size_px};warp=umeyama-linear"

    def align_image(self, image: np.ndarray, *, mode: Mode | str | None = None,
                    already_aligned: bool = False, source: str | None = None) -> FaceOutcome:
        """Align the subject of one image.

        Args:
            image: uint8 (H, W, 3) RGB (grey (H, W) accepted).
            mode: overrides ``config.mode``.
            already_aligned: the image is already a template-framed crop: skip detection, resize to ``size_px``
                (quality = sharpness only; enrolment still rejects blur).
            source: a label kept in the outcome (e.g. the path).
        Raises:
            ImageError: ``image`` is not a uint8 image array.
        """
        m = self._mode(mode)
        pol = self.config.policy
        size = self.config.size_px
        rgb = as_rgb_uint8(image)
        if already_aligned:
            crop = resize_aligned(rgb, size)
            quality = {"sharpness": round(sharpness(crop), 5)}
            fails = quality_failures(quality, pol)
            return self._finish(m, crop, None, quality, 1, fails, source)
        dets = self.detector.detect(rgb)
        if not dets:
            return FaceOutcome(False, None, None, {}, 0, m.value, NO_FACE, f"{NO_FACE}: no face detected", (), source)
        choice = select_subject(dets, rgb.shape, pol)
        det = dets[choice.index]
        crop = warp_to_template(rgb, det.landmarks, size)
        quality = measure(det, crop)
        fails: list[tuple[str, str]] = []
        if choice.dominance is not None:
            quality["dominance"] = round(min(choice.dominance, 1e6), 3)
        if choice.ambiguous:
            fails.append((AMBIGUOUS, ambiguity_reason(choice, pol)))
        fails += quality_failures(quality, pol)
        return self._finish(m, crop, det, quality, len(dets), fails, source)

    def _mode(self, mode: Mode | str | None) -> Mode:
        if mode is None:
            return self.config.mode
        try:
            return Mode(mode)
        except ValueError:
            raise ConfigError(f"face mode must be one of {[m.value for m in Mode]}, got {mode!r}") from None

    @staticmethod
    def _finish(mode: Mode, crop: np.ndarray, det: Any, quality: dict[str, float], found: int,
                fails: list[tuple[str, str]], source: str | None) -> FaceOutcome:
        if fails and mode is Mode.ENROL:
            code, _ = fails[0]
            reason = "; ".join(r for _, r in fails)
            log.debug("rejected %s: %s", source or "<array>", reason)
            return FaceOutcome(False, None, det, quality, found, mode.value, code, reason, (), source)
        return FaceOutcome(True, crop, det, quality, found, mode.value, None, None, tuple(c for c, _ in fails), source)

    def align_path(self, path: str | os.PathLike[str], *, mode: Mode | str | None = None,
                   already_aligned: bool = False) -> FaceOutcome:
        """Decode ``path`` (``pipeline.data.images.decode_image``) and align it; an unreadable file is a reject."""
        from pipeline.data.images import (
            decode_image,  # decoding lives in the data package
        )

        m = self._mode(mode)
        try:
            rgb = decode_image(path)
        except ImageError as exc:
            return FaceOutcome(False, None, None, {}, 0, m.value, UNREADABLE, f"{UNREADABLE}: {exc.reason}", (),
                               str(path))
        return self.align_image(rgb, mode=m, already_aligned=already_aligned, source=str(path))

    def align_batch(self, items: Sequence[ImageInput], *, mode: Mode | str | None = None,
                    already_aligned: bool = False, workers: int | None = None) -> list[FaceOutcome]:
        """Align many images (arrays or paths) on a thread pool bounded to the cores; results in input order.

        OpenCV releases the GIL while detecting, so threads run in parallel; each thread has its own detector
        state. Bad arrays and unreadable files become ``unreadable`` rejects instead of stopping the batch.
        """
        n = len(items)
        if n == 0:
            return []
        self._mode(mode)  # a bad mode fails once, not per item
        cap = available_cores()
        k = max(1, min(n, cap, workers or self.config.workers or cap))

        def one(item: ImageInput) -> FaceOutcome:
            if isinstance(item, np.ndarray):
                try:
                    return self.align_image(item, mode=mode, already_aligned=already_aligned)
                except ImageError as exc:
                    m = self._mode(mode)
                    return FaceOutcome(False, None, None, {}, 0, m.value, UNREADABLE, f"{UNREADABLE}: {exc.reason}")
            return self.align_path(item, mode=mode, already_aligned=already_aligned)

        if k == 1:
            return [one(it) for it in items]
        with ThreadPoolExecutor(max_workers=k, thread_name_prefix="faces") as pool:
            return list(pool.map(one, items))
