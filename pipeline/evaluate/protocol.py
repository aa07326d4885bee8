"""The evaluation protocol: embed an evaluation set and compute its verification metrics (LFW-style k-fold accuracy,
AUC, EER, TAR at fixed FARs over the protocol pairs and over all image pairs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.splits import identity_hashes
from pipeline.evaluate.calibration import achieved_far
from pipeline.evaluate.evalset import EvalSet, build_eval_set
from pipeline.evaluate.metrics import (
    all_pair_scores,
    kfold_accuracy,
    verification_report,
)
from pipeline.faces.loader import preprocessing_from_meta
from pipeline.model.artifacts import LoadedModel
from pipeline.model.embed import embed_array
from pipeline.model.encoder import Encoder

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ModelEvaluation:
    """A saved model evaluated on a pair set.

    Attributes:
        metrics: `evaluate_embeddings` output plus ``model_version``, ``threshold`` (the model's default),
            ``achieved_far`` (per stored threshold, over all cross-identity pairs of the set), ``images_per_s``
            (decode + embed), ``trained_on_eval_people`` (evaluated people the model was trained on; must be
            0 for the numbers to mean anything) and ``validated_on_eval_people`` (evaluated people that chose the
            model's checkpoint and calibrated its threshold: 0 for an unbiased comparison).
        eval_set: the decoded faces and pairs; embeddings: float32 (N, D) unit rows of ``eval_set.images``.
        pair_scores: float32 (P,) cosine of each protocol pair (labels: ``eval_set.same``).
    """

    metrics: dict[str, Any]
    eval_set: EvalSet
    embeddings: np.ndarray
    pair_scores: np.ndarray
    trained_on: frozenset[str]


def evaluate_model(model: LoadedModel, table: pd.DataFrame, people: frozenset[str], pairs: pd.DataFrame | None, *,
                   name: str = "eval", fars: tuple[float, ...] | None = None,
                   progress: Callable[[int], None] | None = None) -> ModelEvaluation:
    """THE evaluation of a saved model, used by `facepipe evaluate`, the retrain flow's gate, the demo and the
    bench scripts: decode the faces of ``people`` (an image table with ``identity``, ``image_path``,
    ``abs_path``) with the model's own preprocessing, embed them as the model was saved to (flip TTA, mean,
    std), score the protocol ``pairs`` (``path1``, ``path2``, ``same``, ``fold``) and all image pairs.

    ``fars`` defaults to the FARs the model's thresholds were calibrated at.
    """
    pre = model.meta["preprocessing"]
    t0 = time.monotonic()
    es = build_eval_set(name, table, people, pairs, preprocessing_from_meta(pre))
    emb = embed_array(model.encoder, es.images, flip_tta=bool(pre["flip_tta"]), mean=tuple(pre["mean"]),
                      std=tuple(pre["std"]), progress=progress)
    seconds = time.monotonic() - t0
    thresholds: dict[str, float] = model.meta["thresholds"]
    if fars is None:
        fars = tuple(float(k.split("=", 1)[1]) for k in thresholds)
    metrics = evaluate_embeddings(es, emb, fars)
    training = model.meta.get("training", {})
    trained, validated = set(training.get("train_identity_hashes", [])), set(training.get("val_identity_hashes", []))
    hashed = dict(zip(sorted(people), identity_hashes(sorted(people))))
    overlap = frozenset(p for p in people if hashed[p] in trained)
    metrics.update({
        "model_version": model.model_version,
        "threshold": model.threshold,
        "achieved_far": {k: achieved_far(emb, es.identities, t) for k, t in thresholds.items()},
        "images_per_s": len(emb) / max(seconds, 1e-9),
        "trained_on_eval_people": len(overlap),
        "validated_on_eval_people": sum(hashed[p] in validated for p in people),
    })
    pair_scores = (emb[es.pair_i] * emb[es.pair_j]).sum(axis=1).astype(np.float32)
    return ModelEvaluation(metrics, es, emb, pair_scores, overlap)
