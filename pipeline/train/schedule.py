"""Optimisation schedule pieces: the learning-rate curve and the exponential moving average of the weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.core.config import Config


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers (BatchNorm statistics) are copied."""
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m.detach(), 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


def lr_at(step: int, total: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak at ``total`` steps."""
    warm = max(1, cfg.train.warmup_steps)
    if step < warm:
        return cfg.train.lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.train.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
