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
        self.members = {int(u): order[s : s + c] for u, s, c in zip(uniq, starts, counts)}
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
