"""A weighted sum of losses over the same batch, e.g. ArcFace + batch-hard triplet."""

from __future__ import annotations

import torch
from torch import nn


class WeightedSumLoss(nn.Module):
    """``sum_i w_i * loss_i(embeddings, labels)``; the parts keep their own parameters (class centres)."""

    def __init__(self, parts: list[nn.Module], weights: list[float]) -> None:
        super().__init__()
        if not parts or len(parts) != len(weights):
            raise ValueError(f"need one weight per loss, got {len(parts)} losses and {len(weights)} weights")
        if any(w < 0 for w in weights):
            raise ValueError(f"weights={weights} must be >= 0")
        self.parts = nn.ModuleList(parts)
        self.weights = list(weights)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings float (B, D) unit norm, labels int64 (B,) -> scalar."""
        total = embeddings.sum() * 0.0
        for w, part in zip(self.weights, self.parts):
            if w:
                total = total + w * part(embeddings, labels)
        return total
