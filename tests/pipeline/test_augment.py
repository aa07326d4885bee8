"""Training augmentation: shapes, ranges, and that each optional transform does what it says."""

import numpy as np
import torch

from pipeline.train.augment import augment, face_mask


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


def test_face_mask_covers_the_template_face_and_leaves_the_corners() -> None:
    m = face_mask(112)
    # the ArcFace template's landmarks (eyes, nose, mouth corners) are inside; the corners are outside
    for x, y in [(38.3, 51.7), (73.5, 51.5), (56.0, 71.7), (41.5, 92.4), (70.7, 92.2)]:
        assert m[int(y), int(x)] == 1.0
    assert m[0, 0] == m[0, -1] == m[-1, 0] == m[-1, -1] == 0.0
    assert 0.45 < m.mean().item() < 0.6
    # a tighter crop of the template shows the same face larger: the mask covers more of it
    assert face_mask(80, crop_fraction=0.8).mean() > face_mask(80).mean()


def test_background_swaps_only_the_surroundings_with_another_image() -> None:
    """Two kinds of flat faces: with background=1 every image keeps its own face and gets the other kind's
    surroundings (a donor is never the image itself); everything else is drawn as without it."""
    x = np.concatenate([np.full((8, 72, 72, 3), 40, np.uint8), np.full((8, 72, 72, 3), 210, np.uint8)])
    kw = {"enabled": True, "rotation_deg": 0.0, "scale": 0.0}
    base = augment(x, 64, np.random.default_rng(5), **kw)
    y = augment(x, 64, np.random.default_rng(5), background=1.0, **kw)
    m = face_mask(64)
    inside, outside = m == 1.0, m == 0.0
    changed = (y != base).any(dim=1)
    assert not changed[:, inside].any()  # the face is untouched
    assert changed[:, outside].float().mean() > 0.3  # dark faces got light surroundings or vice versa, at least
    none = augment(x, 64, np.random.default_rng(5), background=0.0, **kw)
    assert torch.equal(none, base)
