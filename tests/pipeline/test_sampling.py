"""P x K sampling guarantees."""

import numpy as np
import pytest

from pipeline.train.sampling import PKSampler


def test_every_batch_is_p_identities_times_k_images() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), rng.integers(1, 8, size=40))
    s = PKSampler(labels, p=8, k=2, seed=1)
    eligible = {u for u in np.unique(labels) if (labels == u).sum() >= 2}
    batches = list(s)
    assert len(batches) == len(eligible) // 8 > 0
    seen = set()
    for b in batches:
        assert len(b) == 16
        ids, counts = np.unique(labels[b], return_counts=True)
        assert len(ids) == 8 and (counts == 2).all()
        assert set(ids) <= eligible
        assert len(set(b.tolist())) == 16  # k distinct images of each identity
        seen |= set(ids.tolist())
    assert len(seen) == len(batches) * 8  # no identity twice in one epoch


def test_repeats_allow_single_image_identities() -> None:
    labels = np.arange(10)
    batches = list(PKSampler(labels, p=5, k=2, allow_repeats=True))
    assert len(batches) == 2
    for b in batches:
        assert len(np.unique(labels[b])) == 5


def test_too_few_identities_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="only 1 identities"):
        PKSampler(np.array([0, 0, 1]), p=2, k=2)


def test_min_images_fills_k_with_repeats_but_uses_every_distinct_image() -> None:
    # people with 1, 2, 3 and 5 images; K=4, people with >= 2 images take part
    sizes = [1, 2, 3, 5] * 5
    labels = np.repeat(np.arange(len(sizes)), sizes)
    s = PKSampler(labels, p=5, k=4, seed=3, min_images=2)
    assert set(s.eligible.tolist()) == {i for i, n in enumerate(sizes) if n >= 2}
    for b in s:
        assert len(b) == 20
        for ident in np.unique(labels[b]):
            picked = b[labels[b] == ident]
            assert len(picked) == 4
            assert len(set(picked.tolist())) == min(4, sizes[ident])  # all distinct images before any repeat
    with pytest.raises(ValueError, match="min_images"):
        PKSampler(labels, p=2, k=2, min_images=0)
