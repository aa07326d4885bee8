"""Distillation from a frozen teacher: make the student's embedding space match the teacher's.

Two terms over a batch of B images with student embeddings ``s`` (B, Ds) and teacher embeddings ``t`` (B, Dt),
both unit rows:
- per image: ``1 - cos(P s, t)``, with ``P`` a learned linear projection (Ds -> Dt) when the dimensions differ
  (identity otherwise); it is thrown away after training, like a margin-softmax head;
- relational: the mean squared difference between the batch's similarity matrices ``s s^T`` and ``t t^T``
  (off-diagonal entries), which transfers the teacher's geometry without needing ``P`` at all.
``L = cosine_weight * mean_i(1 - cos_i) + relation_weight * mean_{i != j}((s_i.s_j - t_i.t_j)^2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss(nn.Module):
    """Per-image cosine (through a projection when dims differ) + relational similarity-matrix loss."""

    def __init__(self, student_dim: int, teacher_dim: int, *, cosine_weight: float = 1.0,
                 relation_weight: float = 1.0) -> None:
        super().__init__()
        if cosine_weight < 0 or relation_weight < 0 or cosine_weight + relation_weight == 0:
            raise ValueError(f"distillation weights must be >= 0 and not both 0, got cosine={cosine_weight}, "
                             f"relation={relation_weight}")
        self.cosine_weight, self.relation_weight = cosine_weight, relation_weight
        self.projection: nn.Module = (nn.Identity() if student_dim == teacher_dim
                                      else nn.Linear(student_dim, teacher_dim, bias=False))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student float (B, Ds), teacher float (B, Dt) (unit rows) -> scalar loss."""
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"student batch {student.shape[0]} != teacher batch {teacher.shape[0]}")
        loss = student.new_zeros(())
        if self.cosine_weight:
            cos = (F.normalize(self.projection(student), dim=1) * teacher).sum(dim=1)
            loss = loss + self.cosine_weight * (1.0 - cos).mean()
        if self.relation_weight and student.shape[0] > 1:
            b = student.shape[0]
            off = ~torch.eye(b, dtype=torch.bool, device=student.device)
            diff = (student @ student.T - teacher @ teacher.T)[off]
            loss = loss + self.relation_weight * diff.pow(2).mean()
        return loss
