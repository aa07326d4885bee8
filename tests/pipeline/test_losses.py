"""Losses against hand-computed references."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import ContrastiveLoss, MarginSoftmaxLoss, TripletLoss, WeightedSumLoss, contrastive_pair_loss


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
    from pipeline.losses import MultiSimilarityLoss

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
    from pipeline.config import load_config
    from pipeline.losses import MultiSimilarityLoss
    from pipeline.train import build_loss

    assert isinstance(build_loss(load_config(None, ["loss.name=multi-similarity"]), 10), MultiSimilarityLoss)
