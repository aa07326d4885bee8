"""Contrastive loss (Hadsell, Chopra, LeCun 2006): pull genuine pairs together, push impostors past a margin.

``L = same * d**2 + (1 - same) * max(0, margin - d)**2`` with ``d`` the Euclidean distance.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.model.distances import euclidean_distance, pairwise_euclidean


def contrastive_pair_loss(e1: torch.Tensor, e2: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean contrastive loss of explicit pairs: (B, D), (B, D), bool/float (B,) -> scalar."""
    d = euclidean_distance(e1, e2)
    s = same.to(d.dtype)
    return (s * d.pow(2) + (1 - s) * (margin - d).clamp_min(0).pow(2)).mean()


class ContrastiveLoss(nn.Module):
    """Contrastive loss over every pair in a batch of labelled embeddings.

    Genuine and impostor pairs are averaged separately and summed, so the many impostor pairs of a
    P x K batch do not drown the few genuine ones.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        if not 0 < margin <= 2:
            raise ValueError(f"margin={margin}: unit vectors are at most 2 apart, use 0 < margin <= 2")
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings float (B, D) unit norm, labels int64 (B,) -> scalar."""
        d = pairwise_euclidean(embeddings)
        same = labels[:, None] == labels[None, :]
        upper = torch.triu(torch.ones_like(same), diagonal=1)
        pos, neg = same & upper, ~same & upper
        zero = embeddings.sum() * 0.0
        pos_loss = d[pos].pow(2).mean() if pos.any() else zero
        neg_loss = (self.margin - d[neg]).clamp_min(0).pow(2).mean() if neg.any() else zero
        return pos_loss + neg_loss
