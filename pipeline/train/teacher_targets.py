"""Teacher targets for distillation: a teacher embedding for every training image, and extra unlabelled images.

The teacher always sees the face the way it was trained on: aligned to the ArcFace template at 112 px by the
product's aligner (`pipeline.faces`), whatever crop the student uses. Embeddings come from the on-disk teacher
cache (keyed by image sha256 + teacher version + aligner version); missing ones are computed in parallel and
stored, so later runs (and the scheduled retrain flow) reuse them.

Leakage rule: no image of a validation or dev person ever reaches the student, not even unlabelled: an
unlabelled image whose bytes equal one of theirs is dropped (sha256), and the count is logged and recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import CENTRE_MODES, Config, cache_dir, teacher_views_per_image
from pipeline.core.errors import DataError
from pipeline.core.io import file_digest
from pipeline.data.manifest import read_images
from pipeline.faces.crop_cache import AlignedCropCache
from pipeline.faces.loader import (
    FacePreprocessing,
    build_aligner,
    load_faces,
    preprocessing_from_config,
)
from pipeline.model.teachers import TeacherCache, create_teacher
from pipeline.model.teachers.base import l2_normalise
from pipeline.train.prepare import AUGMENT_MARGIN, TrainingData
from pipeline.train.teacher_views import (
    VIEWS_VERSION,
    TeacherViews,
    draw_spec,
    render_view,
    view_key,
)

log = logging.getLogger(__name__)

TEACHER_PX = 112  # the ArcFace template size every teacher adapter takes


def _teacher(cfg: Config) -> Any:
    dc = cfg.distill
    return create_teacher(dc.teacher, path=dc.teacher_file) if dc.teacher == "precomputed" else create_teacher(dc.teacher)


def add_unlabelled(data: TrainingData, cfg: Config) -> TrainingData:
    """Append the images of ``distill.unlabelled`` (a folder or manifest, identities ignored) to the training pool
    with label -1: the teacher supervises them, the metric loss never sees them. Images of validation or dev
    people (same bytes) are dropped."""
    if not cfg.distill.unlabelled:
        return data
    extra = read_images(cfg.distill.unlabelled)
    held = data.table[data.table["identity"].isin(data.split.val | data.split.dev)]
    held_shas = {file_digest(p) for p in held["abs_path"]}
    shas = [file_digest(p) for p in extra["abs_path"]]
    leak = np.array([s in held_shas for s in shas], dtype=bool)
    if leak.any():
        log.warning("unlabelled: %d image(s) are validation/dev images and are NOT used", int(leak.sum()))
    extra = extra[~leak].reset_index(drop=True)
    load_crop = min(1.0, cfg.data.crop_fraction * AUGMENT_MARGIN) if cfg.train.augment else cfg.data.crop_fraction
    load_px = data.images.shape[1]
    faces = load_faces(extra["abs_path"].tolist(), extra["image_path"].tolist(),
                       preprocessing_from_config(cfg, crop_fraction=load_crop, size_px=load_px))
    kept = extra.iloc[faces.keep].assign(identity=None).reset_index(drop=True)
    log.info("unlabelled: %d image(s) added to the distillation pool (%d rejected, %d held-out duplicates)",
             len(kept), len(faces.rejects), int(leak.sum()))
    rows = pd.concat([data.rows, kept], ignore_index=True) if data.rows is not None else kept
    return replace(data, images=np.concatenate([data.images, faces.images]),
                   labels=np.concatenate([data.labels, np.full(len(kept), -1, dtype=np.int64)]), rows=rows,
                   rejects=pd.concat([data.rejects, faces.rejects], ignore_index=True))


def attach_teacher(data: TrainingData, cfg: Config, *,
                   progress: Callable[[int, int], None] | None = None) -> TrainingData:
    """``data`` with ``teacher`` (float32 (N, Dt), row-aligned with ``images``) and ``teacher_info`` filled in,
    when ``distill.teacher`` is set; unchanged otherwise. ``progress(done, total)`` while computing."""
    if not cfg.distill.teacher:
        return data
    if data.rows is None or len(data.rows) != len(data.labels):
        raise DataError("attach_teacher needs the training rows (TrainingData.rows) row-aligned with the images")
    data = add_unlabelled(data, cfg)
    teacher = _teacher(cfg)
    root = cache_dir(cfg.data.cache_dir)
    paths = data.rows["abs_path"].astype(str).tolist()
    shas = [file_digest(p) for p in paths]
    aligner = build_aligner("yunet", TEACHER_PX)
    if aligner is None:  # pragma: no cover - "yunet" always builds one
        raise DataError("no aligner for the teacher")
    crops: dict[str, np.ndarray] = {}
    if teacher.needs_crops:
        prep = FacePreprocessing(1.0, TEACHER_PX, aligner, cache=AlignedCropCache(root / "aligned"))
        faces = load_faces(paths, data.rows["image_path"].astype(str).tolist(), prep)
        crops = {shas[i]: faces.images[k] for k, i in enumerate(faces.keep)}
        missing = [i for i in range(len(paths)) if shas[i] not in crops]
        if missing:  # the student found a face the teacher's aligner did not: the photo's centre stands in
            log.warning("teacher: no aligned face for %d training image(s); using their central crop", len(missing))
            fallback = load_faces([paths[i] for i in missing], None, FacePreprocessing(0.5, TEACHER_PX))
            crops.update({shas[missing[k]]: fallback.images[j] for j, k in enumerate(fallback.keep)})

    def provider(batch: list[str]) -> np.ndarray:
        return np.stack([crops[s] for s in batch])

    emb = TeacherCache(root / "teachers").get_or_compute(teacher, aligner.version, shas, provider,
                                                         workers=cfg.distill.workers, progress=progress)
    info = {"name": teacher.name, "version": teacher.version, "files": dict(teacher.files), "licence": teacher.licence,
            "aligner": aligner.version, "images": len(shas), "unlabelled_images": int((data.labels < 0).sum())}
    log.info("teacher %s: %d embeddings (%d-d)", teacher.version, len(emb), emb.shape[1])
    views = None
    per_image = teacher_views_per_image(cfg)
    if per_image > 0:
        if not teacher.needs_crops:  # said as a warning only when views were asked for by number
            (log.info if cfg.distill.views < 0 else log.warning)(
                "distill.views=%d: a precomputed teacher cannot embed new views; training without them", per_image)
        else:
            views = _teacher_views(cfg, per_image, teacher, aligner.version, shas, crops, root, progress)
            info["views"] = {"per_image": views.per_image, "version": VIEWS_VERSION, "seed": cfg.train.seed,
                             "setting": cfg.distill.views}
    return replace(data, teacher=np.ascontiguousarray(emb, dtype=np.float32), teacher_info=info, views=views)


# distill.centre_teacher="auto" centres a teacher whose embeddings' mean has at least this norm (two random photos'
# cosine is then ~0.25 or more). Measured on the 6,895 training faces (docs/training.md, session 12): dlib's mean
# has norm 0.914 (random photos' cosine 0.835 +- 0.036: its targets crowd into a narrow cone) and is centred;
# SFace's has 0.295 and is left as the default recipe was measured.
CENTRE_MIN_MEAN_NORM = 0.5


def centre_teacher(data: TrainingData, mode: str) -> TrainingData:
    """``data`` with its teacher embeddings (and teacher views') centred on the training images' mean and
    re-normalised, when ``mode`` is "on", or "auto" and that mean's norm is >= `CENTRE_MIN_MEAN_NORM`.

    A teacher whose unit embeddings share a large common component (dlib's) puts every face in a narrow cone:
    cosine, similarity-matrix and neighbourhood targets then differ by little between people, which a student
    copies. Removing the mean keeps the teacher's ranking of neighbours and spreads its similarities over
    [-1, 1]. ``teacher_info["centring"]`` records the mean's norm and whether it was removed; data that already
    carries that record is returned unchanged (never centred twice).
    """
    if data.teacher is None or (data.teacher_info or {}).get("centring") is not None:
        return data
    if mode not in CENTRE_MODES:
        raise DataError(f"distill.centre_teacher={mode!r} must be one of {list(CENTRE_MODES)}")
    mean = data.teacher.mean(axis=0, dtype=np.float64).astype(np.float32)
    norm = float(np.linalg.norm(mean))
    centred = mode == "on" or (mode == "auto" and norm >= CENTRE_MIN_MEAN_NORM)
    info = {**(data.teacher_info or {}), "centring": {"mode": mode, "mean_norm": round(norm, 4), "centred": centred}}
    if not centred:
        return replace(data, teacher_info=info)

    def centre(rows: np.ndarray) -> np.ndarray:
        return l2_normalise(rows - mean, what="the centred teacher")

    views = data.views if data.views is None else replace(data.views, teacher=centre(data.views.teacher))
    log.info("teacher embeddings centred (their mean's norm was %.3f)", norm)
    return replace(data, teacher=centre(data.teacher), teacher_info=info, views=views)


def _teacher_views(cfg: Config, k: int, teacher: Any, aligner_version: str, shas: list[str],
                   crops: dict[str, np.ndarray], root: Any, progress: Callable[[int, int], None] | None) -> TeacherViews:
    """``k`` views of every pool image (`pipeline.train.teacher_views`) and the teacher's embeddings of them, from
    the teacher cache; missing ones are rendered and embedded in parallel."""
    seed = cfg.train.seed
    faces = np.stack([crops[s] for s in shas])
    specs = [draw_spec(shas, i, v, seed) for i in range(len(shas)) for v in range(k)]
    keys = [view_key(shas, sp, seed) for sp in specs]
    by_key = dict(zip(keys, specs))

    def provider(batch: list[str]) -> np.ndarray:
        return np.stack([render_view(faces, by_key[key]) for key in batch])

    log.info("teacher views: %d per image, %d in all", k, len(specs))
    cache = TeacherCache(root / "teachers")
    # a view is made of up to three photos: erasing any of them (lifecycle.erasure) erases its cached embedding
    cache.record_sources({key: [shas[j] for j in (sp.image, sp.partner, sp.donor) if j >= 0]
                          for key, sp in by_key.items()})
    emb = cache.get_or_compute(teacher, aligner_version, keys, provider, workers=cfg.distill.workers,
                               progress=progress)
    return TeacherViews(faces, specs, np.ascontiguousarray(emb, dtype=np.float32), k)
