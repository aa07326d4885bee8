"""From a data folder (+ optional pairs file) to decoded training faces and a validation set."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import DataError
from pipeline.data.manifest import read_images
from pipeline.data.pairs import parse_pairs
from pipeline.data.splits import Split, make_pairs, split_by_pairs, split_random
from pipeline.evaluate.evalset import EvalSet, build_eval_set
from pipeline.faces.loader import face_section, load_faces, preprocessing_from_config

log = logging.getLogger(__name__)

# Training images are decoded this much larger than the input, then randomly cropped back.
AUGMENT_MARGIN = 1.125


@dataclass(frozen=True)
class TrainingData:
    """Decoded training faces (uint8 (N, L, L, 3), L >= input size), int64 labels (-1: no identity, used for
    distillation only), the validation set, and optionally teacher embeddings float32 (N, Dt) row-aligned with
    ``images`` with the teacher's description (name, version, files and their sha256, licence)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    val: EvalSet
    split: Split
    table: pd.DataFrame
    rejects: pd.DataFrame
    teacher: np.ndarray | None = None
    teacher_info: dict[str, Any] | None = None
    rows: pd.DataFrame | None = None  # the training images' table rows (image_path, abs_path, identity), row-aligned
    face: dict[str, Any] | None = None  # the alignment the faces were made with (model.json "face"); None: central crop
    views: Any = None  # `pipeline.train.teacher_views.TeacherViews` when distill.views > 0


def val_from_train(table: pd.DataFrame, split: Split, fraction: float, seed: int) -> Split:
    """Move a seeded ``fraction`` of the multi-image training people to validation.

    Used with ``data.val_source="train"``: the val folds' people then train, and checkpoint choice +
    calibration use this slice instead. Dev people are never touched.
    """
    counts = table[table["identity"].isin(split.train)]["identity"].value_counts()
    multi = sorted(counts[counts >= 2].index)
    if len(multi) < 4:
        raise DataError(f"need at least 4 training people with >= 2 images to validate, found {len(multi)}")
    n_val = max(2, int(round(len(multi) * fraction)))
    val = frozenset(np.random.default_rng(seed).choice(multi, size=n_val, replace=False).tolist())
    return Split(split.train - val, val, split.dev, None, split.dev_pairs)


def load_split(data: str | Path, pairs_file: str | Path | None, cfg: Config,
               holdout: frozenset[str] = frozenset()) -> tuple[pd.DataFrame, Split]:
    """The image table of ``data`` and its person-disjoint split (see :mod:`pipeline.data.splits`).

    ``holdout``: people neither trained nor validated on (they join the dev people), e.g. the people a
    promotion gate evaluates on.

    With a pairs file: dev = people of ``data.dev_folds`` (never trained on); validation = people of
    ``data.val_folds`` (``val_source="folds"``) or a ``val_fraction`` slice of the other people
    (``val_source="train"``, the val folds then train); training = everyone else, single-image people included.
    """
    table = read_images(data, require_identities=True, required=("image_path", "identity"))
    identities = set(table["identity"])
    if pairs_file is not None:
        from_folds = cfg.data.val_source == "folds"
        split = split_by_pairs(identities, parse_pairs(pairs_file), cfg.data.dev_folds,
                               cfg.data.val_folds if from_folds else ())
        if not from_folds:
            split = val_from_train(table, split, cfg.data.val_fraction, cfg.train.seed)
    else:
        split = split_random(table[~table["identity"].isin(holdout)], cfg.data.val_fraction, cfg.train.seed)
    if holdout:
        held = frozenset(holdout) & identities
        val_pairs = split.val_pairs
        if val_pairs is not None:
            val_pairs = val_pairs[~val_pairs["name1"].isin(held) & ~val_pairs["name2"].isin(held)]
            val_pairs = val_pairs.reset_index(drop=True) if len(val_pairs) else None
        split = Split(split.train - held, split.val - held, split.dev | held, val_pairs, split.dev_pairs)
    if split.val_pairs is None:
        val_rows = table[table["identity"].isin(split.val)]
        split = Split(split.train, split.val, split.dev, make_pairs(val_rows, 600, cfg.train.seed), split.dev_pairs)
    log.info("split: %d train, %d val, %d dev people", len(split.train), len(split.val), len(split.dev))
    return table, split


def prepare_training(data: str | Path, pairs_file: str | Path | None, cfg: Config,
                     holdout: frozenset[str] = frozenset()) -> TrainingData:
    """Decode the training people's faces (with an augmentation margin) and the validation set; ``holdout``
    people are neither (see `load_split`)."""
    table, split = load_split(data, pairs_file, cfg, holdout)
    train_rows = table[table["identity"].isin(split.train)].reset_index(drop=True)
    need = cfg.data.min_images_per_identity
    if need > 1:  # people with fewer photos are left out of training altogether (not even for distillation)
        counts = train_rows["identity"].map(train_rows["identity"].value_counts())
        log.info("data.min_images_per_identity=%d: %d training image(s) of %d people with fewer are not used", need,
                 int((counts < need).sum()), train_rows.loc[counts < need, "identity"].nunique())
        train_rows = train_rows[counts >= need].reset_index(drop=True)
    if train_rows.empty:
        raise DataError(f"{data}: no training people left after holding out validation/dev people"
                        + (f" and people with < {need} images" if need > 1 else ""))
    size = cfg.data.image_size_px
    load_px = int(round(size * AUGMENT_MARGIN)) if cfg.train.augment else size
    load_crop = min(1.0, cfg.data.crop_fraction * load_px / size)
    prep = preprocessing_from_config(cfg, crop_fraction=load_crop, size_px=load_px)
    faces = load_faces(train_rows["abs_path"].tolist(), train_rows["image_path"].tolist(), prep)
    kept = train_rows.iloc[faces.keep].reset_index(drop=True)
    class_names = sorted(set(kept["identity"]))
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[c] for c in kept["identity"]], dtype=np.int64)
    val = build_eval_set("val", table, split.val, split.val_pairs, preprocessing_from_config(cfg))
    rejects = pd.concat([faces.rejects, val.rejects], ignore_index=True)
    log.info("training faces: %d images of %d people (%d rejected); val: %d images", len(labels), len(class_names),
             len(rejects), len(val.images))
    return TrainingData(faces.images, labels, class_names, val, split, table, rejects, rows=kept,
                        face=face_section(prep))
