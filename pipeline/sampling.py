"""Identity-balanced P x K batches: P identities, K images each, no identity twice in a batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PKSampler:
    """Yields index batches of exactly ``p * k`` items: ``k`` of each of ``p`` distinct identities.

    Identities with fewer than ``k`` images are drawn with replacement (so single-image people can
    still take part when ``allow_repeats``); otherwise they are skipped. One epoch visits every
    eligible identity about once.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, *, seed: int = 0, allow_repeats: bool = False) -> None:
        if p < 2 or k < 1:
            raise ValueError(f"need p >= 2 and k >= 1, got p={p}, k={k}")
        self.p, self.k, self.allow_repeats = p, k, allow_repeats
        self.rng = np.random.default_rng(seed)
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        uniq, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        self.members = {int(u): order[s : s + c] for u, s, c in zip(uniq, starts, counts)}
        self.eligible = np.array([u for u, m in self.members.items() if len(m) >= k or allow_repeats], dtype=np.int64)
        if len(self.eligible) < p:
            raise ValueError(f"only {len(self.eligible)} identities have >= {k} images; need at least p={p}")

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.eligible) // self.p

    def __iter__(self) -> Iterator[np.ndarray]:
        ids = self.rng.permutation(self.eligible)
        for b in range(len(self)):
            batch = []
            for ident in ids[b * self.p : (b + 1) * self.p]:
                m = self.members[int(ident)]
                batch.append(self.rng.choice(m, size=self.k, replace=len(m) < self.k))
            yield np.concatenate(batch)
