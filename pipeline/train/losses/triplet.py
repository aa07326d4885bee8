"""Triplet loss with in-batch mining: ``max(0, d(a, p) - d(a, n) + margin)``.

Mining strategies over a P x K batch:
- ``all``: every valid (a, p, n) triplet with a positive loss, averaged over those (FaceNet-style "all").
- ``batch-hard`` (Hermans et al. 2017): per anchor, the farthest positive and the closest negative.
- ``semi-hard`` (FaceNet): per (a, p), the closest negative farther than the positive; falls back to
  the hardest negative when none is.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.model.distances import pairwise_euclidean


class TripletLoss(nn.Module):
    """Triplet margin loss on unit embeddings, labels int64 (B,)."""

    def __init__(self, margin: float = 0.2, mining: str = "batch-hard") -> None:
        super().__init__()
        if mining not in ("all", "batch-hard", "semi-hard"):
            raise ValueError(f"mining={mining!r} is not one of ['all', 'batch-hard', 'semi-hard']")
        self.margin, self.mining = margin, mining

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings float (B, D), labels int64 (B,) -> scalar (0 when the batch has no valid triplet)."""
        d = pairwise_euclidean(embeddings)
        n = labels.shape[0]
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=labels.device)
        pos_mask, neg_mask = same & ~eye, ~same
        zero = embeddings.sum() * 0.0
        if not pos_mask.any() or not neg_mask.any():
            return zero
        if self.mining == "batch-hard":
            hardest_pos = torch.where(pos_mask, d, torch.zeros_like(d)).amax(dim=1)
            hardest_neg = torch.where(neg_mask, d, torch.full_like(d, float("inf"))).amin(dim=1)
            valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
            return (hardest_pos - hardest_neg + self.margin).clamp_min(0)[valid].mean()
        # (a, p, n) cube: loss[a, p, n] = d[a, p] - d[a, n] + margin
        cube = d[:, :, None] - d[:, None, :] + self.margin
        valid = pos_mask[:, :, None] & neg_mask[:, None, :]
        if self.mining == "all":
            losses = cube.clamp_min(0)[valid]
            active = losses > 1e-12
            return losses[active].mean() if active.any() else zero
        # semi-hard: negatives with d(a, p) < d(a, n); the closest such one, else the hardest negative
        semi = valid & (d[:, None, :] > d[:, :, None])
        inf = torch.full_like(cube, float("inf"))
        closest_semi = torch.where(semi, d[:, None, :].expand_as(cube), inf).amin(dim=2)
        hardest = torch.where(neg_mask, d, torch.full_like(d, float("inf"))).amin(dim=1)[:, None].expand_as(closest_semi)
        neg_d = torch.where(torch.isfinite(closest_semi), closest_semi, hardest)
        per_pair = (d - neg_d + self.margin).clamp_min(0)
        return per_pair[pos_mask].mean()
