"""Training batches made ready for the model: sampler items -> augmented float tensors (+ labels, indices).

On the CPU the batches are made in the training process (worker processes would compete with the model for the
same cores); on an accelerator a `torch.utils.data.DataLoader` makes them in ``train.loader_workers`` processes
into pinned memory while the device computes. Each batch's augmentation is seeded by (seed, epoch, batch index),
so the batches are the same whichever process makes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.core.config import Config
from pipeline.model.embed import to_input
from pipeline.train.augment import augment
from pipeline.train.teacher_views import TeacherViews


@dataclass(frozen=True)
class Batch:
    """indices int64 (B,) into the training images; the first ``n_metric`` form the labelled P x K part;
    x float (B, 3, S, S); labels int64 (n_metric,); targets int64 (B,): each image's row of the teacher
    targets: the N clean images' rows first, then the views' (view ``k`` of image ``i`` at ``N + i * per_image + k``),
    so an image served as one of its views is taught that view's target."""

    indices: torch.Tensor
    n_metric: int
    x: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None


class AugmentedBatches(IterableDataset):
    """One epoch of sampler items, augmented (`pipeline.train.augment`)."""

    def __init__(self, items: list[tuple[np.ndarray, int]], images: np.ndarray, labels: np.ndarray, cfg: Config,
                 seed: int, epoch: int, views: TeacherViews | None = None) -> None:
        super().__init__()
        self.items, self.images, self.labels, self.cfg, self.seed, self.epoch = items, images, labels, cfg, seed, epoch
        self.views = views

    def make(self, i: int) -> Batch:
        idx, n_metric = self.items[i]
        t = self.cfg.train
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x = augment(self.images[idx], self.cfg.data.image_size_px, rng, t.augment, t.augment_rotation_deg,
                    t.augment_scale, t.augment_erase, t.augment_gray,
                    t.augment_background if self.cfg.data.face_detector != "none" else 0.0,
                    self.cfg.data.crop_fraction)
        targets = idx.copy()
        v = self.views
        if v is not None and self.cfg.distill.view_fraction > 0:
            # some images are served as one of their teacher views instead, with that view's teacher target
            served = np.flatnonzero(rng.random(len(idx)) < self.cfg.distill.view_fraction)
            if len(served):
                rows = idx[served] * v.per_image + rng.integers(0, v.per_image, size=len(served))
                x[torch.from_numpy(served)] = to_input(
                    v.student_images(rows, self.cfg.data.crop_fraction, self.cfg.data.image_size_px))
                targets[served] = len(self.images) + rows
        return Batch(torch.from_numpy(idx), n_metric, x, torch.from_numpy(self.labels[idx[:n_metric]]),
                     torch.from_numpy(targets))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        workers, me = (1, 0) if info is None else (info.num_workers, info.id)
        for i in range(me, len(self.items), workers):  # the DataLoader reads workers round-robin: order is kept
            yield self.make(i)


def _identity(batch: Batch) -> Batch:
    return batch


def epoch_batches(sampler: Iterable[Any], images: np.ndarray, labels: np.ndarray, cfg: Config, seed: int,
                  epoch: int, device: torch.device, *, metric_only: bool,
                  views: TeacherViews | None = None) -> Iterable[Batch]:
    """The batches of one epoch for ``device``. ``metric_only``: the sampler yields index arrays (every item is
    labelled P x K); otherwise ``(indices, n_metric)`` pairs (distillation), some of whose images are served as
    teacher ``views`` (``distill.view_fraction``)."""
    items = [(np.asarray(it, dtype=np.int64), len(it)) if metric_only else (np.asarray(it[0], dtype=np.int64), int(it[1]))
             for it in sampler]
    data = AugmentedBatches(items, images, labels, cfg, seed, epoch, None if metric_only else views)
    if device.type == "cpu" or cfg.train.loader_workers == 0:
        return (data.make(i) for i in range(len(items)))
    return DataLoader(data, batch_size=None, collate_fn=_identity, num_workers=cfg.train.loader_workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4)
