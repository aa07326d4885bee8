"""Verification metrics over similarity scores (higher = more alike). Plain numpy.

Conventions: ``labels`` is bool (True = genuine pair); a pair is accepted when ``score >= threshold``.
FAR = impostors accepted / impostors; TAR = genuines accepted / genuines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    if not y.any() or y.all():
        raise ValueError("need both genuine and impostor pairs")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return s, y


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct threshold, from strictest to loosest.

    Returns:
        far, tar, thresholds: float64 (T,), starting at (0, 0, +inf).
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.array([], dtype=np.int64)
    ends = np.concatenate([distinct, [len(s) - 1]])
    tp = np.cumsum(y)[ends]
    fp = np.cumsum(~y)[ends]
    far = np.concatenate([[0.0], fp / (~y).sum()])
    tar = np.concatenate([[0.0], tp / y.sum()])
    thr = np.concatenate([[np.inf], s[ends]])
    return far, tar, thr


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count one half)."""
    far, tar, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tar, far))


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """The rate where FAR equals FRR (1 - TAR), linearly interpolated between ROC points."""
    far, tar, _ = roc_curve(scores, labels)
    frr = 1.0 - tar
    diff = far - frr  # increases from -1 to +1 along the curve
    i = int(np.searchsorted(diff, 0.0))
    if i == 0:
        return float(far[0])
    if i >= len(diff):
        return float(far[-1])
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def threshold_at_far(impostor_scores: np.ndarray, target_far: float) -> float:
    """The lowest threshold whose FAR on these impostor scores is <= ``target_far``.

    With n impostors, at most ``floor(target_far * n)`` of them may score >= the threshold.
    """
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())[::-1]
    if imp.size == 0:
        raise ValueError("no impostor scores to calibrate on")
    if not 0.0 < target_far < 1.0:
        raise ValueError(f"target_far={target_far} must be in (0, 1)")
    allowed = int(np.floor(target_far * imp.size + 1e-9))
    # accept strictly above the (allowed+1)-th highest impostor score
    return float(np.nextafter(imp[allowed], np.inf))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, target_far: float) -> tuple[float, float, float]:
    """TAR at the threshold calibrated to ``target_far`` on these impostors.

    Returns:
        (tar, achieved_far, threshold).
    """
    s, y = _check(scores, labels)
    thr = threshold_at_far(s[~y], target_far)
    return float((s[y] >= thr).mean()), float((s[~y] >= thr).mean()), thr


def best_accuracy_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold maximising accuracy on these pairs, and that accuracy."""
    s, y = _check(scores, labels)
    order = np.argsort(s)
    s_sorted, y_sorted = s[order], y[order]
    # threshold between s_sorted[i-1] and s_sorted[i]: rejects the first i pairs
    rejected_impostors = np.concatenate([[0], np.cumsum(~y_sorted)])
    accepted_genuine = y.sum() - np.concatenate([[0], np.cumsum(y_sorted)])
    correct = rejected_impostors + accepted_genuine
    # only cut between distinct scores
    valid = np.ones(len(s) + 1, dtype=bool)
    valid[1:-1] = s_sorted[1:] != s_sorted[:-1]
    correct = np.where(valid, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        thr = s_sorted[0] - 1e-6
    elif i == len(s):
        thr = s_sorted[-1] + 1e-6
    else:
        thr = 0.5 * (s_sorted[i - 1] + s_sorted[i])
    return float(thr), float(correct[i] / len(s))


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """LFW 10-fold-style accuracy: per fold, the threshold is chosen on the other folds.

    Returns:
        (mean accuracy, standard deviation over folds).
    """
    s, y = _check(scores, labels)
    f = np.asarray(folds).ravel()
    accs = []
    for fold in np.unique(f):
        test = f == fold
        if test.all():
            raise ValueError("k-fold accuracy needs at least 2 folds")
        thr, _ = best_accuracy_threshold(s[~test], y[~test])
        accs.append(float(((s[test] >= thr) == y[test]).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def all_pair_scores(embeddings: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every unordered image pair (i < j): embeddings float32 (N, D) unit norm.

    Returns:
        scores float32 (N*(N-1)/2,), labels bool (same identity).
    """
    e = np.asarray(embeddings, dtype=np.float32)
    ids = np.asarray(identities)
    sims = e @ e.T
    iu = np.triu_indices(len(e), k=1)
    return sims[iu], ids[iu[0]] == ids[iu[1]]


@dataclass(frozen=True)
class VerificationReport:
    """The standard numbers of a verification benchmark."""

    pairs: int
    accuracy: float
    accuracy_std: float
    auc: float
    eer: float
    tar_at_far: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return asdict(self)


def verification_report(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray | None,
                        fars: tuple[float, ...] = (1e-3, 1e-2)) -> VerificationReport:
    """Accuracy (k-fold if ``folds`` has >= 2 values, else best-threshold), AUC, EER, TAR@FAR."""
    s, y = _check(scores, labels)
    if folds is not None and len(np.unique(folds)) >= 2:
        acc, std = kfold_accuracy(s, y, np.asarray(folds))
    else:
        acc, std = best_accuracy_threshold(s, y)[1], 0.0
    tars = {f"{far:g}": tar_at_far(s, y, far)[0] for far in fars}
    return VerificationReport(len(s), acc, std, roc_auc(s, y), equal_error_rate(s, y), tars)
