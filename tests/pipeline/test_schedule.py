"""The optimisation schedule: learning-rate curve, weight average, and the pull toward the starting weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.core.config import load_config
from pipeline.train.schedule import AnchorPull, lr_at, update_ema


def test_lr_warms_up_then_decays_to_one_percent() -> None:
    cfg = load_config(overrides=["train.lr=0.1", "train.warmup_steps=10"])
    assert lr_at(0, 100, cfg) == pytest.approx(0.01)
    assert lr_at(9, 100, cfg) == pytest.approx(0.1)
    assert lr_at(55, 100, cfg) == pytest.approx(0.1 * (0.01 + 0.99 * 0.5), rel=1e-6)  # half-way down the cosine
    assert lr_at(100, 100, cfg) == pytest.approx(0.001)
    assert lr_at(500, 100, cfg) == pytest.approx(0.001)


def test_weight_average_moves_by_one_minus_decay() -> None:
    ema, model = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        model.weight.fill_(1.0)
    update_ema(ema, model, 0.9)
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.1))


def test_anchor_pulls_each_weight_back_by_lr_times_strength() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    start = [p.detach().clone() for p in model.parameters()]
    pull = AnchorPull(model, strength=5.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # every weight 1.0 away from its start
    pull(lr=0.02)  # 0.1 of the way back
    for p, s in zip(model.parameters(), start):
        assert torch.allclose(p - s, torch.full_like(p, 0.9), atol=1e-6)
    for _ in range(200):
        pull(lr=0.02)
    for p, s in zip(model.parameters(), start):
        assert torch.allclose(p, s, atol=1e-6)


def test_anchor_skips_frozen_weights_and_caps_the_step() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight.requires_grad_(False)
    pull = AnchorPull(model, strength=1e6)
    start0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(3.0)
        model[1].weight.fill_(7.0)
    pull(lr=1.0)  # lr * strength > 1: lands exactly on the start, never past it
    assert torch.equal(model[0].weight, start0)
    assert torch.all(model[1].weight == 7.0)
    with pytest.raises(ValueError, match="anchor strength"):
        AnchorPull(model, strength=-1.0)


def test_training_keeps_an_anchored_model_near_its_start() -> None:
    """A strong pull against a loss that wants large weights: the trained weights stay near the start."""
    torch.manual_seed(1)
    free, held = nn.Linear(8, 1), nn.Linear(8, 1)
    held.load_state_dict(free.state_dict())
    start = free.weight.detach().clone()
    pull = AnchorPull(held, strength=50.0)
    x = torch.randn(64, 8)
    for model, anchor in ((free, None), (held, pull)):
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
        for _ in range(300):
            opt.zero_grad()
            (-model(x).mean()).backward()  # unbounded: pushes every weight one way
            opt.step()
            if anchor is not None:
                anchor(0.01)
    drift_free = (free.weight - start).norm().item()
    drift_held = (held.weight - start).norm().item()
    assert drift_free > 2.0
    assert drift_held < drift_free / 5
