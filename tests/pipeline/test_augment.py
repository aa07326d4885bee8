"""Training augmentation: shapes, ranges, and that each optional transform does what it says."""

import numpy as np
import torch

from pipeline.train.augment import augment


def _faces(n: int = 16, px: int = 72) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def test_disabled_is_a_deterministic_center_crop() -> None:
    x = _faces()
    a = augment(x, 64, np.random.default_rng(1), enabled=False)
    b = augment(x, 64, np.random.default_rng(2), enabled=False)
    assert a.shape == (16, 3, 64, 64) and torch.equal(a, b)


def test_gray_makes_the_three_channels_equal_for_about_that_fraction() -> None:
    x = _faces(400)
    y = augment(x, 64, np.random.default_rng(3), enabled=True, gray=0.25)
    grey = (y[:, 0] == y[:, 1]).all(dim=(1, 2)) & (y[:, 1] == y[:, 2]).all(dim=(1, 2))
    assert 0.18 < grey.float().mean().item() < 0.32  # 100 expected of 400


def test_erase_fills_one_rectangle_of_2_to_20_percent_with_a_constant() -> None:
    x = np.full((200, 72, 72, 3), 128, dtype=np.uint8)  # flat grey faces: the erased patch stands out
    base = augment(x, 64, np.random.default_rng(4), enabled=True)
    y = augment(x, 64, np.random.default_rng(4), enabled=True, erase=1.0)
    changed = (y != base).any(dim=1)  # (N, 64, 64)
    frac = changed.float().mean(dim=(1, 2))
    erased = frac > 0
    assert erased.float().mean() > 0.95  # every image gets a patch (a patch equal to the background is rare)
    assert (frac[erased] <= 0.21).all() and (frac[erased] >= 0.01).all()
    for i in np.flatnonzero(erased.numpy())[:20]:  # one axis-aligned rectangle of a single colour
        ys, xs = np.nonzero(changed[i].numpy())
        box = y[i, :, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert changed[i].sum().item() == box.shape[1] * box.shape[2]
        assert torch.allclose(box, box[:, :1, :1].expand_as(box))
