"""Training-time augmentation of decoded faces: random crop, mirror, photometric jitter, rotation/zoom, erasing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.embed import to_input

# The face in an ArcFace-template crop (112 px, fractions of its side): an ellipse from the brows to the chin
# and cheek to cheek; what lies outside it (hair, ears, background) is the photo's, not the person's.
FACE_ELLIPSE = (0.5, 0.57, 0.36, 0.46)  # centre x, centre y, semi-axis x, semi-axis y


def face_mask(out_px: int, crop_fraction: float = 1.0, feather: float = 0.06) -> torch.Tensor:
    """float (S, S): 1 inside `FACE_ELLIPSE` of an aligned face cropped to its central ``crop_fraction``, 0
    outside, with a soft edge ``feather`` (fraction of the side) wide."""
    cx, cy, ax, ay = FACE_ELLIPSE
    v = (np.arange(out_px) + 0.5) / out_px  # crop coordinates -> template coordinates
    u = (v - 0.5) * crop_fraction + 0.5
    r = np.sqrt(((u[None, :] - cx) / ax) ** 2 + ((u[:, None] - cy) / ay) ** 2)
    edge = feather / min(ax, ay)
    return torch.from_numpy(np.clip((1 + edge / 2 - r) / edge, 0, 1).astype(np.float32))


def augment(images: np.ndarray, out_px: int, rng: np.random.Generator, enabled: bool,
            rotation_deg: float = 0.0, scale: float = 0.0, erase: float = 0.0, gray: float = 0.0,
            background: float = 0.0, crop_fraction: float = 1.0) -> torch.Tensor:
    """uint8 (B, L, L, 3) -> normalised float (B, 3, S, S).

    Random crop, mirror, brightness/contrast jitter, and optionally a random rotation (+-
    ``rotation_deg``) and zoom (``1 +- scale``) applied as one batched affine warp. ``background``: the
    probability that an image's surroundings (outside `face_mask`; for aligned faces cropped to
    ``crop_fraction`` of the template) are replaced by another image's of the batch, so that no shortcut
    through the photo's background, hair or clothes (often shared by one person's photos in a dataset) pays.
    """
    b, load_px = images.shape[0], images.shape[1]
    if not enabled or load_px == out_px:
        off = (load_px - out_px) // 2
        return to_input(images[:, off : off + out_px, off : off + out_px])
    ys = rng.integers(0, load_px - out_px + 1, size=b)
    xs = rng.integers(0, load_px - out_px + 1, size=b)
    crops = np.stack([images[i, y : y + out_px, x : x + out_px] for i, (y, x) in enumerate(zip(ys, xs))])
    flip = rng.random(b) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    x = to_input(crops)
    if rotation_deg > 0 or scale > 0:
        angle = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, size=b))
        zoom = rng.uniform(1.0 - scale, 1.0 + scale, size=b)
        theta = np.zeros((b, 2, 3), dtype=np.float32)
        theta[:, 0, 0] = theta[:, 1, 1] = np.cos(angle) / zoom
        theta[:, 0, 1] = -np.sin(angle) / zoom
        theta[:, 1, 0] = np.sin(angle) / zoom
        grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, size=(b, 1, 1, 1))).float()
    bias = torch.from_numpy(rng.uniform(-0.15, 0.15, size=(b, 1, 1, 1))).float()
    x = (x * gain + bias).clamp_(-1.5, 1.5)
    if gray > 0:
        grey = rng.random(b) < gray
        if grey.any():
            x[grey] = x[grey].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    if erase > 0:  # random erasing (Zhong et al., 2020): a rectangle of 2-20 % of the face, aspect 0.3-3.3
        for i in np.flatnonzero(rng.random(b) < erase):
            area = rng.uniform(0.02, 0.2) * out_px * out_px
            aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
            h = int(min(out_px, round(np.sqrt(area * aspect))))
            w = int(min(out_px, round(np.sqrt(area / aspect))))
            y0, x0 = rng.integers(0, out_px - h + 1), rng.integers(0, out_px - w + 1)
            x[i, :, y0 : y0 + h, x0 : x0 + w] = torch.from_numpy(rng.uniform(-1, 1, size=(3, 1, 1))).float()
    if background > 0 and b > 1:
        swap = torch.from_numpy(rng.random(b) < background)
        if swap.any():
            donor = (np.arange(b) + rng.integers(1, b)) % b  # another image of the batch (as jittered), never itself
            m = face_mask(out_px, crop_fraction)
            mixed = x * m + x[torch.from_numpy(donor)] * (1 - m)
            x = torch.where(swap[:, None, None, None], mixed, x)
    return x
