"""From image files to model-input faces, the ONE way every path does it: training, evaluation, `embed`,
`enroll`, `verify`, `identify`, the flows and the demo.

`FacePreprocessing` says how: with an aligner, each photo is detected, its subject aligned to the ArcFace
template (``aligner.config.size_px``) and then centre-cropped (``crop_fraction`` of the aligned crop) and
resized to ``size_px``; without one (``aligner=None``, for photos already framed like LFW deep-funneled crops)
the photo itself is centre-cropped. A model records its preprocessing in ``model.json`` (with the aligner's
version: detector, weights hash, template, size), so a store refuses queries prepared another way.

Aligned crops can be cached on disk (`AlignedCropCache`, keyed by image sha256 + aligner version), so training
data is aligned once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import Config, cache_dir
from pipeline.core.errors import ConfigError
from pipeline.core.io import file_digest
from pipeline.data.image_batch import FaceArray, decode_faces
from pipeline.data.images import center_crop_resize
from pipeline.data.manifest import empty_rejects
from pipeline.faces.aligner import AlignerConfig, FaceAligner
from pipeline.faces.crop_cache import AlignedCropCache
from pipeline.faces.outcome import FaceOutcome
from pipeline.faces.policy import FacePolicy, Mode

log = logging.getLogger(__name__)

QUALITY_COLUMNS = ("faces_found", "face_score", "interocular_px", "sharpness", "yaw_deg", "quality_flags")


@dataclass(frozen=True)
class FacePreprocessing:
    """How model-input faces are made from photos.

    Attributes:
        crop_fraction: central crop of the aligned face (or of the photo without an aligner).
        size_px: model input side.
        aligner: detect + align; None = the photo is already framed (central crop only).
        mode: enrol (policy rejects bad faces) or query (bad faces pass, flagged).
        cache: aligned crops on disk, keyed by image sha256 + aligner version (training uses it).
    """

    crop_fraction: float
    size_px: int
    aligner: FaceAligner | None = None
    mode: Mode = Mode.QUERY
    cache: AlignedCropCache | None = field(default=None, compare=False)

    @property
    def alignment(self) -> str | None:
        """The aligner's version (None without alignment): part of a model's identity."""
        return None if self.aligner is None else self.aligner.version

    def with_mode(self, mode: Mode | str) -> FacePreprocessing:
        return FacePreprocessing(self.crop_fraction, self.size_px, self.aligner, Mode(mode), self.cache)


def build_aligner(detector: str, aligned_px: int, *, mode: Mode | str = Mode.QUERY,
                  policy: FacePolicy | None = None) -> FaceAligner | None:
    """The aligner named by a config or a model.json (``"none"`` -> None); ``policy``: the acceptance limits
    (default `FacePolicy()`; not part of the aligner's version: crops do not depend on it)."""
    if detector in ("", "none"):
        return None
    return FaceAligner(AlignerConfig(detector=detector, size_px=aligned_px, mode=Mode(mode),
                                     policy=policy or FacePolicy()))


def preprocessing_from_config(cfg: Config, *, crop_fraction: float | None = None, size_px: int | None = None,
                              mode: Mode | str = Mode.QUERY, cached: bool = True) -> FacePreprocessing:
    """The preprocessing a training config asks for (``data.face_detector``, ``aligned_px``, crop, size); the
    aligned-crop cache lives in ``data.cache_dir``. ``crop_fraction`` / ``size_px`` override the config's (training
    loads faces larger than the input, for random crops)."""
    aligner = build_aligner(cfg.data.face_detector, cfg.data.aligned_px, mode=mode)
    cache = AlignedCropCache(cache_dir(cfg.data.cache_dir) / "aligned") if cached and aligner is not None else None
    return FacePreprocessing(cfg.data.crop_fraction if crop_fraction is None else crop_fraction,
                             cfg.data.image_size_px if size_px is None else size_px, aligner, Mode(mode), cache)


def preprocessing_from_meta(pre: dict[str, Any], *, mode: Mode | str = Mode.QUERY,
                            cache: AlignedCropCache | None = None, policy: FacePolicy | None = None) -> FacePreprocessing:
    """The preprocessing a saved model was trained with (its ``model.json`` ``preprocessing`` section), with the
    face ``policy`` of this call (default `FacePolicy()`).

    Raises ConfigError when this installation's aligner differs from the one recorded (other detector weights
    would make other crops: the model's embeddings and thresholds would not hold).
    """
    face = pre.get("face")
    aligner = None
    if face:
        aligner = build_aligner(str(face["detector"]), int(face["aligned_px"]), mode=mode, policy=policy)
        if aligner is not None and aligner.version != face["alignment"]:
            raise ConfigError(f"the model was trained on faces aligned by {face['alignment']!r} but this installation "
                              f"aligns with {aligner.version!r}; install the recorded detector weights or retrain")
    return FacePreprocessing(float(pre["crop_fraction"]), int(pre["image_size_px"]), aligner, Mode(mode), cache)


def face_section(prep: FacePreprocessing) -> dict[str, Any] | None:
    """What ``model.json`` records of the alignment (None without an aligner)."""
    if prep.aligner is None:
        return None
    cfg = prep.aligner.config
    return {"detector": cfg.detector, "aligned_px": cfg.size_px, "alignment": prep.aligner.version,
            "template": "arcface112"}


@dataclass(frozen=True)
class LoadedFaces(FaceArray):
    """`FaceArray` plus, for aligned input, one row of face information per kept image (``QUALITY_COLUMNS``)."""

    info: pd.DataFrame = field(default_factory=pd.DataFrame)


def _info_row(o: FaceOutcome) -> dict[str, Any]:
    q = o.quality
    return {"faces_found": int(o.faces_found), "face_score": q.get("score", np.nan),
            "interocular_px": q.get("interocular_px", np.nan), "sharpness": q.get("sharpness", np.nan),
            "yaw_deg": q.get("yaw_deg", np.nan), "quality_flags": ",".join(o.flags)}


def _info_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))
    return frame.astype({"faces_found": "int64", "face_score": "float32", "interocular_px": "float32",
                         "sharpness": "float32", "yaw_deg": "float32", "quality_flags": "string"})


def load_faces(paths: Sequence[str | None], display_paths: Sequence[str] | None, prep: FacePreprocessing, *,
               progress: Callable[[int], None] | None = None, known_errors: Sequence[str | None] | None = None,
               already_aligned: bool = False) -> LoadedFaces:
    """Model-input faces uint8 (N, size_px, size_px, 3) for the images that yield one; the others are rejects
    (image_path, error) naming why (unreadable, no face, or an enrolment policy failure with its measured value).

    ``already_aligned``: the files are aligned crops already (skip detection; still resized to the template).
    """
    if prep.aligner is None:
        arr = decode_faces(paths, display_paths, prep.crop_fraction, prep.size_px, progress=progress,
                           known_errors=known_errors)
        return LoadedFaces(arr.images, arr.keep, arr.rejects)
    shown = list(display_paths) if display_paths is not None else [str(p) for p in paths]
    n = len(paths)
    todo = [i for i in range(n) if not (known_errors is not None and isinstance(known_errors[i], str))
            and isinstance(paths[i], str) and paths[i]]
    outcomes: dict[int, FaceOutcome] = {}
    # the cache holds query-mode outcomes (every face found, flags kept): training and queries use it
    cached = prep.cache is not None and not already_aligned and prep.mode is Mode.QUERY
    shas: dict[int, str | None] = {}
    if cached:
        shas = {i: _sha_or_none(paths[i]) for i in todo}
        hits = prep.cache.get(prep.aligner.version, [s for s in shas.values() if s])
        outcomes.update({i: hits[s] for i, s in shas.items() if s in hits})
    missing = [i for i in todo if i not in outcomes]
    if missing:
        fresh = prep.aligner.align_batch([paths[i] for i in missing], mode=prep.mode, already_aligned=already_aligned)
        outcomes.update(zip(missing, fresh))
        if cached:
            prep.cache.put(prep.aligner.version, {s: outcomes[i] for i in missing if (s := shas.get(i))})
    images, keep, info, errors = [], [], [], []
    for i in range(n):
        if known_errors is not None and isinstance(known_errors[i], str):
            errors.append((shown[i], known_errors[i]))
        elif i not in outcomes:
            errors.append((shown[i], "image path is empty or not valid UTF-8"))
        else:
            o = outcomes[i]
            if not o.accepted or o.crop is None:
                errors.append((shown[i], str(o.reject_reason)))
            else:
                images.append(center_crop_resize(o.crop, prep.crop_fraction, prep.size_px))
                keep.append(i)
                info.append(_info_row(o))
        if progress is not None:
            progress(1)
    if errors:
        log.warning("%d of %d image(s) rejected (first: %s: %s)", len(errors), n, *errors[0])
    stack = np.stack(images) if images else np.zeros((0, prep.size_px, prep.size_px, 3), np.uint8)
    rejects = pd.DataFrame(errors, columns=["image_path", "error"]).astype("string") if errors else empty_rejects()
    return LoadedFaces(stack, np.asarray(keep, dtype=np.int64), rejects, _info_frame(info))


def load_table(table: pd.DataFrame, prep: FacePreprocessing, *, progress: Callable[[int], None] | None = None,
               already_aligned: bool = False) -> LoadedFaces:
    """`load_faces` over an image table (``abs_path``, ``image_path``, optional ``error``)."""
    errors = table["error"].tolist() if "error" in table.columns else None
    return load_faces(table["abs_path"].tolist(), table["image_path"].tolist(), prep, progress=progress,
                      known_errors=errors, already_aligned=already_aligned)


def _sha_or_none(path: str) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None
