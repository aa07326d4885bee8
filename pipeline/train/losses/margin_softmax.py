"""Margin-softmax heads used only for training: ArcFace (additive angular) and CosFace (additive cosine).

Verification still compares embeddings; the class-weight matrix is thrown away after training.
ArcFace logit for the true class: ``s * cos(theta + m)``; CosFace: ``s * (cos(theta) - m)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MarginSoftmaxLoss(nn.Module):
    """Cross-entropy over ``num_classes`` normalised class centres with an ArcFace or CosFace margin."""

    def __init__(self, embedding_dim: int, num_classes: int, kind: str = "arcface", margin: float = 0.3,
                 scale: float = 30.0) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"kind={kind!r} is not one of ['arcface', 'cosface']")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a softmax head needs at least 2 classes")
        self.kind, self.margin, self.scale = kind, margin, scale
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled margin logits float (B, C) for unit embeddings (B, D) and labels int64 (B,)."""
        cos = F.linear(embeddings, F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)
        target = cos.gather(1, labels[:, None])
        if self.kind == "cosface":
            adjusted = target - self.margin
        else:
            theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
            # past pi - m the angle would wrap; use the CosFace-style fallback there (as in InsightFace)
            adjusted = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                                   target - self.margin * math.sin(self.margin))
        return self.scale * cos.scatter(1, labels[:, None], adjusted)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy: (B, D), (B,) -> scalar."""
        return F.cross_entropy(self.logits(embeddings, labels), labels)
