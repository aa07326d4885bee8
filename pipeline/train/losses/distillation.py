"""Distillation from a frozen teacher: make the student's embedding space match the teacher's.

Three terms over a batch of B images with student embeddings ``s`` (B, Ds) and teacher embeddings ``t`` (B, Dt),
both unit rows:
- per image: ``1 - cos(P s, t)``, with ``P`` a learned linear projection (Ds -> Dt) when the dimensions differ
  (identity otherwise); it is thrown away after training, like a margin-softmax head;
- relational: the mean squared difference between the batch's similarity matrices ``s s^T`` and ``t t^T``
  (off-diagonal entries), which transfers the teacher's geometry without needing ``P`` at all;
- neighbourhood (``bank_weight > 0``): against a bank ``Q`` (N, Dt) of the teacher's embeddings of every
  training image, the student's similarity distribution ``softmax(norm(P s) Q^T / tau)`` is pulled to the
  teacher's ``softmax(t Q^T / tau)`` (KL divergence, as in SEED, Fang et al. 2021). Unlike the other two terms
  it compares each image with ~10^4 others at every step, and at a small ``tau`` it weighs the teacher's
  nearest neighbours (the same person's other photos, the look-alikes) most: the part of the space that a
  threshold at FAR 1e-3 and a one-shot gallery search depend on.
``L = cosine_weight * mean_i(1 - cos_i) + relation_weight * mean_{i != j}((s_i.s_j - t_i.t_j)^2)
     + bank_weight * mean_i KL(p_t,i || p_s,i)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss(nn.Module):
    """Per-image cosine (through a projection when dims differ) + relational similarity-matrix loss
    + (optional) the teacher's neighbourhood over a bank of its embeddings of the training images."""

    def __init__(self, student_dim: int, teacher_dim: int, *, cosine_weight: float = 1.0,
                 relation_weight: float = 1.0, bank: torch.Tensor | None = None, bank_weight: float = 0.0,
                 bank_temperature: float = 0.05) -> None:
        super().__init__()
        if min(cosine_weight, relation_weight, bank_weight) < 0 or cosine_weight + relation_weight + bank_weight == 0:
            raise ValueError(f"distillation weights must be >= 0 and not all 0, got cosine={cosine_weight}, "
                             f"relation={relation_weight}, bank={bank_weight}")
        if bank_weight > 0 and (bank is None or bank.ndim != 2 or bank.shape[1] != teacher_dim):
            raise ValueError(f"bank_weight={bank_weight} needs a bank of teacher embeddings (N, {teacher_dim}), got "
                             f"{None if bank is None else tuple(bank.shape)}")
        if not bank_temperature > 0:
            raise ValueError(f"bank_temperature must be > 0, got {bank_temperature}")
        self.cosine_weight, self.relation_weight = cosine_weight, relation_weight
        self.bank_weight, self.bank_temperature = bank_weight, bank_temperature
        self.projection: nn.Module = (nn.Identity() if student_dim == teacher_dim
                                      else nn.Linear(student_dim, teacher_dim, bias=False))
        # not saved with the checkpoint: it is rebuilt from the (cached) teacher embeddings of the training data
        self.register_buffer("bank", bank.float() if bank_weight > 0 else torch.zeros(0, teacher_dim),
                             persistent=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student float (B, Ds), teacher float (B, Dt) (unit rows) -> scalar loss."""
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"student batch {student.shape[0]} != teacher batch {teacher.shape[0]}")
        loss = student.new_zeros(())
        projected = F.normalize(self.projection(student), dim=1) if self.cosine_weight or self.bank_weight else None
        if self.cosine_weight:
            cos = (projected * teacher).sum(dim=1)
            loss = loss + self.cosine_weight * (1.0 - cos).mean()
        if self.relation_weight and student.shape[0] > 1:
            b = student.shape[0]
            off = ~torch.eye(b, dtype=torch.bool, device=student.device)
            diff = (student @ student.T - teacher @ teacher.T)[off]
            loss = loss + self.relation_weight * diff.pow(2).mean()
        if self.bank_weight:
            log_p_t = F.log_softmax(teacher @ self.bank.T / self.bank_temperature, dim=1)
            log_p_s = F.log_softmax(projected @ self.bank.T / self.bank_temperature, dim=1)
            kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)  # mean_i KL(p_t,i || p_s,i)
            loss = loss + self.bank_weight * kl
        return loss
