"""Evaluation sets: the decoded faces of held-out people and the pairs over them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.faces.loader import FacePreprocessing, load_faces

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSet:
    """Decoded faces of a set of people, and pairs over them.

    Attributes:
        images: uint8 (N, S, S, 3); identities, image_paths: (N,) object arrays.
        pair_i, pair_j: int64 (P,) positions into ``images``; same: bool (P,); fold: int64 (P,).
    """

    name: str
    images: np.ndarray
    identities: np.ndarray
    image_paths: np.ndarray
    pair_i: np.ndarray
    pair_j: np.ndarray
    same: np.ndarray
    fold: np.ndarray
    rejects: pd.DataFrame


def build_eval_set(name: str, table: pd.DataFrame, people: frozenset[str], pairs: pd.DataFrame | None,
                   prep: FacePreprocessing) -> EvalSet:
    """Decode every image of ``people`` from an image table; map ``pairs`` (path1/path2 relative) onto them.

    Pairs whose images failed to decode are dropped (they are in ``rejects``).
    """
    rows = table[table["identity"].isin(people)].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{name} set: none of its {len(people)} people have images in the data")
    faces = load_faces(rows["abs_path"].tolist(), rows["image_path"].tolist(), prep)
    kept = rows.iloc[faces.keep].reset_index(drop=True)
    pos = {p: i for i, p in enumerate(kept["image_path"])}
    if pairs is not None and len(pairs):
        ok = pairs["path1"].isin(pos) & pairs["path2"].isin(pos)
        if (~ok).any():
            log.warning("%s set: %d pair(s) dropped (image missing or rejected)", name, int((~ok).sum()))
        p = pairs[ok]
        pi = np.array([pos[x] for x in p["path1"]], dtype=np.int64)
        pj = np.array([pos[x] for x in p["path2"]], dtype=np.int64)
        same, fold = p["same"].to_numpy(bool), p["fold"].to_numpy(np.int64)
    else:
        pi = pj = fold = np.zeros(0, dtype=np.int64)
        same = np.zeros(0, dtype=bool)
    return EvalSet(name, faces.images, kept["identity"].to_numpy(object), kept["image_path"].to_numpy(object),
                   pi, pj, same, fold, faces.rejects)
