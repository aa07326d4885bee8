"""Evaluation sets (faces of held-out people + their pairs) and the metrics computed on them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.faces import decode_faces
from pipeline.embed import embed_array
from pipeline.errors import DataError
from pipeline.metrics import all_pair_scores, kfold_accuracy, threshold_at_far, verification_report
from pipeline.model.encoder import Encoder

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
                   crop_fraction: float, size_px: int) -> EvalSet:
    """Decode every image of ``people`` from an image table; map ``pairs`` (path1/path2 relative) onto them.

    Pairs whose images failed to decode are dropped (they are in ``rejects``).
    """
    rows = table[table["identity"].isin(people)].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{name} set: none of its {len(people)} people have images in the data")
    faces = decode_faces(rows["abs_path"].tolist(), rows["image_path"].tolist(), crop_fraction, size_px)
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


def evaluate_embeddings(es: EvalSet, emb: np.ndarray, fars: tuple[float, ...]) -> dict[str, Any]:
    """Metrics of embeddings float32 (N, D) for an eval set.

    ``pairs``: the protocol pairs (k-fold accuracy, AUC, EER, TAR@FAR).
    ``all_pairs``: every image pair of the set's people (AUC, EER, TAR@FAR over all cross-identity pairs).
    """
    out: dict[str, Any] = {"images": int(len(emb)), "people": int(len(set(es.identities)))}
    if len(es.same) and es.same.any() and (~es.same).any():
        scores = (emb[es.pair_i] * emb[es.pair_j]).sum(axis=1)
        out["pairs"] = verification_report(scores, es.same, es.fold, fars).to_dict()
        sub = ten_subfolds(es.fold, es.same)
        if sub is not None:
            acc, std = kfold_accuracy(scores, es.same, sub)
            out["pairs"]["accuracy_10fold"], out["pairs"]["accuracy_10fold_std"] = acc, std
    scores, labels = all_pair_scores(emb, es.identities)
    if labels.any() and (~labels).any():
        rep = verification_report(scores, labels, None, fars).to_dict()
        out["all_pairs"] = {k: rep[k] for k in ("pairs", "auc", "eer", "tar_at_far")}
        out["all_pairs"]["genuine_pairs"] = int(labels.sum())
    return out


def ten_subfolds(fold: np.ndarray, same: np.ndarray) -> np.ndarray | None:
    """Split k protocol folds (k in 1, 2, 5, 10) into 10 balanced folds for LFW-style 10-fold accuracy.

    Each protocol fold is cut into ``10 // k`` consecutive parts of its genuine and of its impostor
    pairs (so every part keeps the 50/50 balance). fold, same: (P,) -> int64 (P,) fold ids, or None
    when k does not divide 10 or a part would be empty.
    """
    folds = np.unique(fold)
    if len(folds) == 0 or 10 % len(folds):
        return None
    n_sub = 10 // len(folds)
    out = np.zeros(len(fold), dtype=np.int64)
    for fi, f in enumerate(folds):
        for s in (True, False):
            idx = np.flatnonzero((fold == f) & (same == s))
            if len(idx) < n_sub:
                return None
            out[idx] = fi * n_sub + np.arange(len(idx)) * n_sub // len(idx)
    return out


def evaluate_encoder(encoder: Encoder, es: EvalSet, fars: tuple[float, ...], flip_tta: bool) -> tuple[dict[str, Any], np.ndarray]:
    """Embed an eval set and compute its metrics. Returns (metrics, embeddings)."""
    emb = embed_array(encoder, es.images, flip_tta=flip_tta)
    return evaluate_embeddings(es, emb, fars), emb


def calibrate_thresholds(emb: np.ndarray, identities: np.ndarray, fars: tuple[float, ...]) -> dict[str, float]:
    """Thresholds at each target FAR from all cross-identity pairs of a validation set."""
    scores, labels = all_pair_scores(emb, identities)
    impostors = scores[~labels]
    if impostors.size * min(fars) < 1:
        log.warning("only %d impostor pairs: the threshold at FAR %g is coarse", impostors.size, min(fars))
    return {f"far={far:g}": threshold_at_far(impostors, far) for far in fars}


def achieved_far(emb: np.ndarray, identities: np.ndarray, threshold: float) -> float:
    """The FAR a threshold gives on all cross-identity pairs of a set."""
    scores, labels = all_pair_scores(emb, identities)
    return float((scores[~labels] >= threshold).mean())
