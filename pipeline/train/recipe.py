"""The training recipe's factories: the configured loss, the distillation loss and the batch samplers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError
from pipeline.train.losses import (
    ContrastiveLoss,
    MarginSoftmaxLoss,
    MultiSimilarityLoss,
    TripletLoss,
    WeightedSumLoss,
)
from pipeline.train.losses.distillation import DistillationLoss
from pipeline.train.sampling import DistillationSampler, PKSampler


def build_loss(cfg: Config, num_classes: int) -> nn.Module:
    """The configured loss module (a margin-softmax loss owns trainable class centres).

    ``loss.triplet_weight > 0`` with arcface/cosface adds a triplet term on the same batch (mixed loss).
    """
    lc = cfg.loss
    if lc.name == "contrastive":
        return ContrastiveLoss(lc.contrastive_margin)
    if lc.name == "triplet":
        return TripletLoss(lc.triplet_margin, lc.mining)
    if lc.name == "multi-similarity":
        return MultiSimilarityLoss()
    if lc.name in ("arcface", "cosface"):
        margin = lc.angular_margin_rad if lc.name == "arcface" else lc.cosine_margin
        head = MarginSoftmaxLoss(cfg.model.embedding_dim, num_classes, lc.name, margin, lc.scale)
        if lc.triplet_weight > 0:
            return WeightedSumLoss([head, TripletLoss(lc.triplet_margin, lc.mining)], [1.0, lc.triplet_weight])
        return head
    raise ConfigError(f"loss.name={lc.name!r} is not one of ['contrastive', 'triplet', 'multi-similarity', 'arcface', "
                      "'cosface']")


def build_sampler(cfg: Config, labels: np.ndarray, seed: int | None = None) -> PKSampler:
    """P x K batches. Margin-softmax losses use every person (single-image ones are classes too);
    metric losses use people with >= ``train.sampler_min_images`` images (repeats fill up K)."""
    tc = cfg.train
    seed = tc.seed if seed is None else seed
    if cfg.loss.name in ("arcface", "cosface"):
        return PKSampler(labels, tc.identities_per_batch, tc.images_per_identity, seed=seed, allow_repeats=True)
    # sampler_min_images = 1 lets single-image people in: their K "images" are augmentations of one photo
    return PKSampler(labels, tc.identities_per_batch, tc.images_per_identity, seed=seed,
                     min_images=min(tc.images_per_identity, max(1, tc.sampler_min_images)))


def build_distillation(cfg: Config, student_dim: int, teacher: np.ndarray | None) -> DistillationLoss | None:
    """The distillation loss when the training data carries teacher embeddings float32 (N, Dt), else None."""
    if teacher is None:
        if cfg.distill.teacher:
            raise ConfigError(f"distill.teacher={cfg.distill.teacher!r} but the training data has no teacher "
                              "embeddings (prepare it with pipeline.train.teacher_targets.attach_teacher)")
        return None
    dc = cfg.distill
    bank = None
    if dc.bank_weight > 0:  # the teacher's embeddings of the training images (a seeded sample when there are many)
        rows = np.arange(len(teacher))
        if len(rows) > dc.bank_size:
            rows = np.sort(np.random.default_rng(cfg.train.seed).choice(rows, dc.bank_size, replace=False))
        bank = torch.from_numpy(np.ascontiguousarray(teacher[rows], dtype=np.float32))
    return DistillationLoss(student_dim, int(teacher.shape[1]), cosine_weight=dc.cosine_weight,
                            relation_weight=dc.relation_weight, bank=bank, bank_weight=dc.bank_weight,
                            bank_temperature=dc.bank_temperature)


def build_distillation_sampler(cfg: Config, data: Any, seed: int) -> DistillationSampler:
    """Distillation batches: a P x K part of labelled people (when ``distill.metric_weight > 0``) + extra images
    from the whole pool. ``data``: `TrainingData` (labels int64 (N,), -1 = no identity)."""
    pk = None
    if cfg.distill.metric_weight > 0:
        pk = build_sampler(cfg, data.labels, seed)
    return DistillationSampler(len(data.labels), cfg.distill.extra_per_batch, pk, seed=seed + 7919)
