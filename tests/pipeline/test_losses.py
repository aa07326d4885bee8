"""Losses against hand-computed references."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from pipeline.train.losses import (
    ContrastiveLoss,
    MarginSoftmaxLoss,
    MultiSimilarityLoss,
    TripletLoss,
    WeightedSumLoss,
    contrastive_pair_loss,
)


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_contrastive_pair_loss_by_hand() -> None:
    e1 = unit([1, 0], [1, 0])
    e2 = unit([0, 1], [1, 0.2])
    same = torch.tensor([True, False])
    # pair 0: genuine, d = sqrt(2) -> d^2 = 2. pair 1: impostor, d = |(1,0)-(0.98058,0.19612)| = 0.19705
    d1 = math.dist((1, 0), (1 / math.sqrt(1.04), 0.2 / math.sqrt(1.04)))
    expected = (2.0 + (0.5 - d1) ** 2) / 2
    assert contrastive_pair_loss(e1, e2, same, margin=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_batch_loss_by_hand() -> None:
    e = unit([1, 0], [0.8, 0.6], [0, 1])
    labels = torch.tensor([0, 0, 1])
    d01 = math.dist((1, 0), (0.8, 0.6))
    d02 = math.dist((1, 0), (0, 1))
    d12 = math.dist((0.8, 0.6), (0, 1))
    m = 1.5
    pos = d01**2
    neg = (max(0, m - d02) ** 2 + max(0, m - d12) ** 2) / 2
    assert ContrastiveLoss(m)(e, labels).item() == pytest.approx(pos + neg, rel=1e-6)


def test_triplet_batch_hard_by_hand() -> None:
    e = unit([1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    d = torch.cdist(e, e)
    m = 0.3
    expected = []
    for a in range(4):
        pos = max(d[a, p].item() for p in range(4) if p != a and labels[p] == labels[a])
        neg = min(d[a, n].item() for n in range(4) if labels[n] != labels[a])
        expected.append(max(0.0, pos - neg + m))
    assert TripletLoss(m, "batch-hard")(e, labels).item() == pytest.approx(sum(expected) / 4, rel=1e-6)


def test_triplet_all_and_semi_hard_by_hand() -> None:
    e = unit([1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    d = torch.cdist(e, e)
    m = 1.0
    losses, semi = [], []
    for a in range(4):
        for p in range(4):
            if p == a or labels[p] != labels[a]:
                continue
            negs = [n for n in range(4) if labels[n] != labels[a]]
            for n in negs:
                v = d[a, p].item() - d[a, n].item() + m
                if v > 1e-12:
                    losses.append(v)
            farther = [d[a, n].item() for n in negs if d[a, n] > d[a, p]]
            dn = min(farther) if farther else min(d[a, n].item() for n in negs)
            semi.append(max(0.0, d[a, p].item() - dn + m))
    assert TripletLoss(m, "all")(e, labels).item() == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert TripletLoss(m, "semi-hard")(e, labels).item() == pytest.approx(sum(semi) / len(semi), rel=1e-6)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_softmax_by_hand(kind: str) -> None:
    torch.manual_seed(0)
    head = MarginSoftmaxLoss(2, 3, kind, margin=0.2, scale=10.0).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    e = unit([0.6, 0.8])
    label = torch.tensor([1])
    w = F.normalize(head.weight, dim=1)
    cos = (w @ e[0]).tolist()
    target = math.cos(math.acos(cos[1]) + 0.2) if kind == "arcface" else cos[1] - 0.2
    logits = [10 * cos[0], 10 * target, 10 * cos[2]]
    expected = -logits[1] + math.log(sum(math.exp(v) for v in logits))
    assert head(e, label).item() == pytest.approx(expected, rel=1e-6)


def test_loss_argument_errors() -> None:
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(3.0)
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(0.2, "hardest")


def test_weighted_sum_is_the_weighted_sum_of_its_parts() -> None:
    torch.manual_seed(0)
    e = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    head = MarginSoftmaxLoss(4, 4, "cosface", margin=0.2, scale=10.0).double()
    tri = TripletLoss(0.3, "batch-hard")
    expected = head(e, labels).item() + 0.5 * tri(e, labels).item()
    assert WeightedSumLoss([head, tri], [1.0, 0.5])(e, labels).item() == pytest.approx(expected, rel=1e-9)
    assert len(list(WeightedSumLoss([head, tri], [1.0, 0.5]).parameters())) == 1  # the class centres train
    with pytest.raises(ValueError, match="one weight per loss"):
        WeightedSumLoss([head], [1.0, 2.0])


def test_multi_similarity_matches_a_hand_loop() -> None:
    torch.manual_seed(3)
    e = torch.nn.functional.normalize(torch.randn(8, 5), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    a_, b_, base, eps = 2.0, 50.0, 0.5, 0.1
    s = (e @ e.T).tolist()
    total = 0.0
    for i in range(8):
        pos = [s[i][j] for j in range(8) if j != i and y[j] == y[i]]
        neg = [s[i][j] for j in range(8) if y[j] != y[i]]
        kn = [v for v in neg if v + eps > min(pos)]
        kp = [v for v in pos if v - eps < max(neg)]
        total += math.log1p(sum(math.exp(-a_ * (v - base)) for v in kp)) / a_
        total += math.log1p(sum(math.exp(b_ * (v - base)) for v in kn)) / b_
    got = MultiSimilarityLoss(a_, b_, base, eps)(e, y)
    assert got.item() == pytest.approx(total / 8, rel=1e-5)
    # well separated classes (positives identical, negatives orthogonal): nothing is mined, loss 0
    sep = torch.eye(4).repeat_interleave(2, dim=0)
    assert MultiSimilarityLoss()(sep, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).item() == 0.0


def test_multi_similarity_is_selectable_in_the_config() -> None:
    from pipeline.core.config import load_config
    from pipeline.train.recipe import build_loss

    assert isinstance(build_loss(load_config(None, ["loss.name=multi-similarity"]), 10), MultiSimilarityLoss)


# --- multi-similarity against pytorch-metric-learning (an independent implementation) -----------------------
# How the two are defined:
# * PML splits the paper's method in two: MultiSimilarityMiner(epsilon) picks the pairs (negative n of anchor a
#   kept when S[a, n] + eps > min_p S[a, p], positive p when S[a, p] - eps < max_n S[a, n]; strict, like ours),
#   MultiSimilarityLoss(alpha, beta, base) weighs the pairs it is given (all pairs without a miner) and averages
#   over all B anchors (an anchor with no pair gives 0). Ours does both in one module: loss + miner = ours.
# * Ours with eps >= 2 keeps every pair (cosines lie in [-1, 1]) of every anchor that has a positive: then it is
#   PML's loss without a miner, when every anchor has a positive. An anchor without one (a single-image identity)
#   keeps nothing in ours (nor in PML's miner: no hardest positive to compare with), but PML's unmined loss still
#   pushes its negatives away. So that comparison runs on P x K batches only.
# Where they differ (not asserted):
# * PML normalises the embeddings itself (CosineSimilarity); ours expects unit vectors. We compare on unit vectors.
# * PML's GenericPairLoss returns 0 whenever every mined index list has <= 1 entry (e.g. one positive and one
#   negative pair mined in the whole batch); ours returns the loss of those pairs. The batches below mine many.


def _batch(seed: int, labels: list[int], dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (not unit) embeddings: a random centre per identity + noise, so that some pairs are easy (the
    miner drops them) and some are hard."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)
    centres = torch.randn(int(y.max()) + 1, dim, generator=g, dtype=torch.float64)
    return centres[y] + 0.7 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64), y


def _loss_and_grad(loss_of, raw: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = raw.clone().requires_grad_()
    loss = loss_of(F.normalize(x, dim=1))
    loss.backward()
    return loss.item(), x.grad


# P x K batches, one with single-image identities (anchors without a positive) and uneven K
LABELS = [[0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], [0, 0, 1, 1, 1, 2, 3, 4, 4, 5]]


@pytest.mark.parametrize("alpha,beta,base,eps", [(2.0, 50.0, 0.5, 0.1), (1.0, 10.0, 0.2, 0.3), (4.0, 30.0, 0.0, 0.05)])
@pytest.mark.parametrize("labels", LABELS, ids=["4x2", "4x3", "singletons"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_similarity_equals_pml_loss_with_its_miner(alpha: float, beta: float, base: float, eps: float,
                                                         labels: list[int], seed: int) -> None:
    raw, y = _batch(seed, labels)
    miner = pml_miners.MultiSimilarityMiner(epsilon=eps)
    pml = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    a1, _, a2, _ = miner(F.normalize(raw, dim=1), y)
    # the miner really selects (some pairs dropped) and enough pairs that PML's "<= 1 pair" shortcut is not hit
    n_pos, n_neg = int((y[:, None] == y[None, :]).sum()) - len(y), int((y[:, None] != y[None, :]).sum())
    assert len(a1) + len(a2) < n_pos + n_neg and max(len(a1), len(a2)) > 1
    want, want_grad = _loss_and_grad(lambda e: pml(e, y, miner(e, y)), raw)
    got, got_grad = _loss_and_grad(lambda e: MultiSimilarityLoss(alpha, beta, base, eps)(e, y), raw)
    assert want > 0
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-7, atol=1e-10)  # same pairs, same weights


@pytest.mark.parametrize("labels", LABELS[:2], ids=["4x2", "4x3"])
def test_multi_similarity_without_mining_equals_pml_loss_alone(labels: list[int]) -> None:
    raw, y = _batch(7, labels)
    want, want_grad = _loss_and_grad(lambda e: pml_losses.MultiSimilarityLoss(2.0, 50.0, 0.5)(e, y), raw)
    got, got_grad = _loss_and_grad(lambda e: MultiSimilarityLoss(2.0, 50.0, 0.5, eps=2.5)(e, y), raw)
    assert got == pytest.approx(want, rel=1e-9)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-7, atol=1e-10)
    # and mining changes the value here, so the mined comparison above is not the unmined one in disguise
    assert MultiSimilarityLoss(2.0, 50.0, 0.5, eps=0.1)(F.normalize(raw, dim=1), y).item() != pytest.approx(want)


def test_multi_similarity_is_zero_like_pml_when_nothing_can_be_mined() -> None:
    e = F.normalize(torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=1)
    for y in (torch.zeros(6, dtype=torch.long), torch.arange(6)):  # no negatives / no positives at all
        miner = pml_miners.MultiSimilarityMiner(0.1)
        assert pml_losses.MultiSimilarityLoss()(e, y, miner(e, y)).item() == 0.0
        assert MultiSimilarityLoss()(e, y).item() == 0.0
