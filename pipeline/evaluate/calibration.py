"""Threshold calibration: the score threshold at a target false-accept rate, and the FAR a threshold achieves."""

from __future__ import annotations

import logging

import numpy as np

from pipeline.evaluate.metrics import all_pair_scores, threshold_at_far

log = logging.getLogger(__name__)


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
