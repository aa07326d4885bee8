"""Verification metrics against brute-force references and synthetic score distributions."""

import numpy as np
import pytest

from pipeline.evaluate.metrics import (
    best_accuracy_threshold,
    equal_error_rate,
    kfold_accuracy,
    roc_auc,
    tar_at_far,
    threshold_at_far,
    verification_report,
)


def brute_auc(s: np.ndarray, y: np.ndarray) -> float:
    g, i = s[y], s[~y]
    return float(((g[:, None] > i[None, :]).sum() + 0.5 * (g[:, None] == i[None, :]).sum()) / (len(g) * len(i)))


def test_auc_equals_mann_whitney() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.4
    s = np.round(rng.normal(y * 1.0, 1.0), 1)  # rounding makes ties
    assert roc_auc(s, y) == pytest.approx(brute_auc(s, y), abs=1e-12)


def test_perfect_and_inverted_scores() -> None:
    y = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), y) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), y) == 0.0
    assert equal_error_rate(np.array([0.9, 0.8, 0.1, 0.2]), y) == 0.0


def test_eer_of_symmetric_gaussians() -> None:
    from math import erf, sqrt

    rng = np.random.default_rng(1)
    n = 200_000
    s = np.concatenate([rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n)])
    y = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    expected = 0.5 * (1 + erf(-1.0 / sqrt(2)))  # Phi(-1): threshold at 0
    assert equal_error_rate(s, y) == pytest.approx(expected, abs=3e-3)


@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.1])
def test_calibrated_threshold_hits_target_far_on_fresh_samples(far: float) -> None:
    rng = np.random.default_rng(2)
    calib = rng.normal(0.0, 0.15, 200_000)
    thr = threshold_at_far(calib, far)
    assert (calib >= thr).mean() <= far  # never above the target on the calibration data
    fresh = rng.normal(0.0, 0.15, 2_000_000)
    assert (fresh >= thr).mean() == pytest.approx(far, rel=0.15)


def test_threshold_at_far_exact_counts() -> None:
    imp = np.arange(1000, dtype=float)  # 0..999
    thr = threshold_at_far(imp, 0.01)  # at most 10 impostors may pass
    assert (imp >= thr).sum() == 10
    assert (imp >= np.nextafter(thr, -np.inf) - 1).sum() > 10  # and it is the lowest such threshold


def test_tar_at_far() -> None:
    genuine = np.linspace(0.5, 1.0, 100)
    impostor = np.linspace(0.0, 0.6, 1000)
    s = np.concatenate([genuine, impostor])
    y = np.concatenate([np.ones(100, bool), np.zeros(1000, bool)])
    tar, achieved, thr = tar_at_far(s, y, 0.01)
    assert achieved <= 0.01
    assert tar == pytest.approx((genuine >= thr).mean())


def test_kfold_accuracy_uses_other_folds() -> None:
    # fold 1 separable at 0.5; fold 2 separable only at 0.7: thresholds transfer imperfectly
    s = np.array([0.9, 0.6, 0.4, 0.1, 0.9, 0.8, 0.65, 0.2])
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    acc, std = kfold_accuracy(s, y, folds)
    thr1, _ = best_accuracy_threshold(s[folds == 2], y[folds == 2])
    thr2, _ = best_accuracy_threshold(s[folds == 1], y[folds == 1])
    expected = [((s[folds == 1] >= thr1) == y[folds == 1]).mean(), ((s[folds == 2] >= thr2) == y[folds == 2]).mean()]
    assert acc == pytest.approx(np.mean(expected))
    assert std == pytest.approx(np.std(expected))


def test_best_accuracy_threshold_by_brute_force() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.5
    s = rng.normal(y * 0.8, 1.0)
    thr, acc = best_accuracy_threshold(s, y)
    brute = max(((s >= t) == y).mean() for t in np.concatenate([s, [s.max() + 1]]))
    assert acc == pytest.approx(brute)
    assert ((s >= thr) == y).mean() == pytest.approx(acc)


def test_report_and_input_errors() -> None:
    rng = np.random.default_rng(4)
    y = np.tile([True, False], 300)
    s = rng.normal(y * 2.0, 1.0)
    rep = verification_report(s, y, np.repeat(np.arange(10), 60), (1e-2,))
    assert 0.8 < rep.accuracy <= 1 and 0.9 < rep.auc <= 1 and set(rep.tar_at_far) == {"0.01"}
    with pytest.raises(ValueError, match="both genuine and impostor"):
        roc_auc(np.ones(3), np.ones(3, bool))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([np.nan, 1.0]), np.array([True, False]))


def test_ten_subfolds_cuts_each_protocol_fold_into_balanced_parts() -> None:
    from pipeline.evaluate.protocol import ten_subfolds

    # 2 protocol folds of 600 pairs (300 genuine, 300 impostor), genuine and impostor interleaved
    fold = np.repeat([6, 7], 600)
    same = np.tile(np.array([True, False]), 600)
    sub = ten_subfolds(fold, same)
    assert sub is not None and sub.shape == (1200,)
    assert sorted(np.unique(sub)) == list(range(10))
    for s in range(10):
        part = sub == s
        assert part.sum() == 120 and same[part].sum() == 60  # 60 genuine + 60 impostor
        assert len(np.unique(fold[part])) == 1  # a part never mixes protocol folds
    assert set(np.unique(sub[fold == 6])) == set(range(5)) and set(np.unique(sub[fold == 7])) == set(range(5, 10))
    # parts are consecutive runs within each fold's genuine (and impostor) pairs, in file order
    gen6 = sub[(fold == 6) & same]
    assert (np.diff(gen6) >= 0).all()


def test_ten_subfolds_refuses_counts_that_do_not_divide_ten() -> None:
    from pipeline.evaluate.protocol import ten_subfolds

    same = np.tile(np.array([True, False]), 30)
    assert ten_subfolds(np.repeat([1, 2, 3], 20), same) is None  # 3 folds: 10 % 3 != 0
    assert ten_subfolds(np.zeros(4, dtype=np.int64), np.array([True, True, True, False])) is None  # 1 impostor < 10 parts
    one = ten_subfolds(np.zeros(60, dtype=np.int64), same)  # one fold -> 10 parts of 3 + 3
    assert one is not None and np.bincount(one).tolist() == [6] * 10
