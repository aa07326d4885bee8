"""Identity-balanced P x K batches: P identities, K images each, no identity twice in a batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PKSampler:
    """Yields index batches of exactly ``p * k`` items: ``k`` of each of ``p`` distinct identities.

    An identity takes part when it has at least ``min_images`` images (default: ``k``, or 1 with
    ``allow_repeats``); one with fewer than ``k`` images is drawn with replacement (its repeats
    differ only by augmentation). One epoch visits every eligible identity about once.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, *, seed: int = 0, allow_repeats: bool = False,
                 min_images: int | None = None) -> None:
        if p < 2 or k < 1:
            raise ValueError(f"need p >= 2 and k >= 1, got p={p}, k={k}")
        if min_images is not None and min_images < 1:
            raise ValueError(f"min_images={min_images} must be >= 1")
        self.p, self.k, self.allow_repeats = p, k, allow_repeats
        self.min_images = min_images if min_images is not None else (1 if allow_repeats else k)
        self.rng = np.random.default_rng(seed)
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        uniq, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        # negative labels mark images without an identity (distillation only): never part of a P x K batch
        self.members = {int(u): order[s : s + c] for u, s, c in zip(uniq, starts, counts) if u >= 0}
        self.eligible = np.array([u for u, m in self.members.items() if len(m) >= self.min_images], dtype=np.int64)
        if len(self.eligible) < p:
            raise ValueError(f"only {len(self.eligible)} identities have >= {self.min_images} images; "
                             f"need at least p={p}")

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.eligible) // self.p

    def __iter__(self) -> Iterator[np.ndarray]:
        ids = self.rng.permutation(self.eligible)
        for b in range(len(self)):
            batch = []
            for ident in ids[b * self.p : (b + 1) * self.p]:
                m = self.members[int(ident)]
                if len(m) >= self.k:
                    batch.append(self.rng.choice(m, size=self.k, replace=False))
                else:  # every image once, then repeats: as many distinct images as the identity has
                    extra = self.rng.choice(m, size=self.k - len(m), replace=True)
                    batch.append(np.concatenate([self.rng.permutation(m), extra]))
            yield np.concatenate(batch)


class DistillationSampler:
    """Batches for distillation: a P x K part of labelled identities (for a metric loss) followed by ``extra``
    images drawn from the whole pool (labelled once or not at all: single-image people, unlabelled folders),
    which only the teacher supervises. Yields ``(indices, n_metric)``: the first ``n_metric`` indices form the
    P x K part (0 when ``pk`` is None). One epoch draws every pool image about once.
    """

    def __init__(self, pool_size: int, extra: int, pk: PKSampler | None, *, seed: int = 0) -> None:
        if extra < 0 or (extra == 0 and pk is None):
            raise ValueError(f"a distillation batch needs extra > 0 or a P x K part, got extra={extra}")
        if pool_size < 1:
            raise ValueError("the distillation pool is empty")
        self.pool_size, self.extra, self.pk = pool_size, extra, pk
        self.rng = np.random.default_rng(seed)
        self._pk_iter: Iterator[np.ndarray] | None = None

    def __len__(self) -> int:
        """Batches per epoch: the pool divided by the images a batch draws."""
        per_batch = self.extra + (self.pk.p * self.pk.k if self.pk is not None else 0)
        return max(1, self.pool_size // per_batch)

    def _next_pk(self, pk: PKSampler) -> np.ndarray:
        """The next P x K batch, starting a new P x K epoch whenever one ends."""
        while True:
            if self._pk_iter is None:
                self._pk_iter = iter(pk)
            batch = next(self._pk_iter, None)
            if batch is not None:
                return batch
            self._pk_iter = None

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        order = self.rng.permutation(self.pool_size)
        for b in range(len(self)):
            extra = order[b * self.extra : (b + 1) * self.extra] if self.extra else np.zeros(0, np.int64)
            if len(extra) < self.extra:  # the pool is smaller than one batch's share: draw with repeats
                extra = self.rng.choice(self.pool_size, size=self.extra, replace=True)
            if self.pk is None:
                yield extra.astype(np.int64), 0
            else:
                part = self._next_pk(self.pk)
                yield np.concatenate([part, extra]).astype(np.int64), len(part)
