"""Distances between embeddings (torch). On unit vectors, ``euclidean**2 == 2 - 2 * cosine``."""

from __future__ import annotations

import torch


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of unit vectors: (B, D), (B, D) -> (B,)."""
    return (a * b).sum(dim=1)


def euclidean_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise Euclidean distance: (B, D), (B, D) -> (B,). ``eps`` keeps the gradient finite at 0."""
    return ((a - b).pow(2).sum(dim=1) + eps).sqrt()


def pairwise_cosine(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """All cosines of unit vectors: (N, D), (M, D) -> (N, M)."""
    return a @ (a if b is None else b).T


def pairwise_euclidean(a: torch.Tensor, b: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """All Euclidean distances of unit vectors: (N, D), (M, D) -> (N, M)."""
    return (2.0 - 2.0 * pairwise_cosine(a, b)).clamp_min(0.0).add(eps).sqrt()
