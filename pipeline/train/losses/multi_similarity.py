"""Multi-similarity loss (Wang et al., CVPR 2019): every informative pair of the batch, weighted by how hard it is.

Cosine similarities S of unit embeddings. Per anchor a, pairs are mined first: a negative n is kept when
``S[a, n] + eps > min_p S[a, p]`` and a positive p when ``S[a, p] - eps < max_n S[a, n]``. Then
``L_a = 1/alpha * log(1 + sum_p exp(-alpha (S[a, p] - base))) + 1/beta * log(1 + sum_n exp(beta (S[a, n] - base)))``
averaged over anchors (anchors with nothing kept contribute 0).
"""

from __future__ import annotations

import torch
from torch import nn


class MultiSimilarityLoss(nn.Module):
    """embeddings float (B, D) unit-norm, labels int64 (B,) -> scalar."""

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, eps: float = 0.1) -> None:
        super().__init__()
        self.alpha, self.beta, self.base, self.eps = alpha, beta, base, eps

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = embeddings @ embeddings.T
        n = labels.shape[0]
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=labels.device)
        pos, neg = same & ~eye, ~same
        inf = torch.full_like(s, float("inf"))
        min_pos = torch.where(pos, s, inf).amin(dim=1, keepdim=True)
        max_neg = torch.where(neg, s, -inf).amax(dim=1, keepdim=True)
        keep_neg = neg & (s + self.eps > min_pos)
        keep_pos = pos & (s - self.eps < max_neg)
        zero = torch.zeros_like(s)
        pos_term = torch.log1p(torch.where(keep_pos, torch.exp(-self.alpha * (s - self.base)), zero).sum(dim=1)) / self.alpha
        neg_term = torch.log1p(torch.where(keep_neg, torch.exp(self.beta * (s - self.base)), zero).sum(dim=1)) / self.beta
        return (pos_term + neg_term).mean()
