"""Optimisation schedule pieces: the learning-rate curve, the exponential moving average of the weights and the
pull toward the starting weights (L2-SP)."""

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


class AnchorPull:
    """Decoupled L2-SP (Li et al., "Explicit inductive bias for transfer learning", 2018): after each optimiser
    step every trainable weight moves a fraction ``lr * strength`` of the way back to its starting value,
    ``w <- w + lr * strength * (w0 - w)``, as AdamW's decay moves it toward zero. With the start the teacher's own
    weights (``model.inherit``) this keeps what the teacher learnt from millions of faces unless the training
    faces keep asking for a change, a softer form of ``model.freeze_blocks``."""

    def __init__(self, model: nn.Module, strength: float) -> None:
        if strength < 0:
            raise ValueError(f"anchor strength must be >= 0, got {strength}")
        self.strength = strength
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.start = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def __call__(self, lr: float) -> None:
        """Pull the weights toward the start by ``min(1, lr * strength)`` of their distance."""
        weight = min(1.0, lr * self.strength)
        if weight > 0 and self.params:
            torch._foreach_lerp_(self.params, self.start, weight)
