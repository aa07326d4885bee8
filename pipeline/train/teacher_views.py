"""Teacher views: augmented copies of the training faces that the teacher itself has embedded.

The plain targets are the teacher's embeddings of the clean aligned faces, while the student sees augmented ones:
it is taught "this distorted face has the clean face's embedding", on 6,895 faces, and stops improving after
~2,500 steps (docs/training.md). A *view* is a face the teacher sees exactly as the student does (consistent
teaching; Beyer et al., "Knowledge distillation: a good teacher is patient and consistent", 2022): the face, in
some views blended with another training face (mixup: a face that is nobody in the data, so the teacher's
answer for it is new information), its surroundings swapped for another photo's, turned, zoomed, shifted,
mirrored, re-lit, blurred or made low-resolution. ``distill.views`` views per image are drawn once, embedded by
the teacher and cached on disk like the plain targets (`TeacherCache`, keyed by a sha256 of what makes the
view), so only the first run pays for them.

A view is fully described by a `ViewSpec` drawn from a generator seeded by (seed, image sha256, view number):
the same view is rendered byte for byte by the process that embeds it and by every batch that trains on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.train.augment import face_mask

VIEWS_VERSION = "views-1"  # bump when render_view or draw_spec changes what a view looks like
VIEW_PX = 112  # views are rendered at the teacher's size; the student's copy is resized from it

# how often each distortion is drawn (per view) and its range
MIX_P, MIX_LAMBDA = 0.5, (0.35, 0.65)  # blend with another face, its weight on this face
BACKGROUND_P = 0.7
ROTATION_DEG, ZOOM, SHIFT = 10.0, 0.1, 0.04  # SHIFT: fraction of the side
GAIN, BIAS, SATURATION = 0.3, 30.0, 0.4
GRAY_P, BLUR_P, BLUR_SIGMA, LOWRES_P, LOWRES_PX = 0.1, 0.2, (0.6, 1.6), 0.15, (28, 56)


@dataclass(frozen=True)
class ViewSpec:
    """One view of pool image ``image``: ``partner`` (-1: no blend) and its weight ``1 - lam``; ``donor`` (-1:
    own surroundings); the affine (degrees, zoom, shift in pixels), mirror, gain/bias/saturation, grey, blur
    sigma (0: none), low-resolution side (0: none)."""

    image: int
    number: int
    partner: int
    lam: float
    donor: int
    angle: float
    zoom: float
    shift: tuple[float, float]
    flip: bool
    gain: float
    bias: float
    saturation: float
    gray: bool
    blur: float
    lowres: int


def draw_spec(shas: list[str], image: int, number: int, seed: int) -> ViewSpec:
    """The ``number``-th view of pool image ``image`` (``shas``: the pool's image sha256s, in pool order)."""
    rng = np.random.default_rng([seed, int(shas[image][:15], 16), number])
    n = len(shas)

    def other() -> int:
        return int((image + rng.integers(1, n)) % n) if n > 1 else -1

    partner = other() if rng.random() < MIX_P else -1
    lam = float(rng.uniform(*MIX_LAMBDA)) if partner >= 0 else 1.0
    donor = other() if rng.random() < BACKGROUND_P else -1
    return ViewSpec(
        image=image, number=number, partner=partner, lam=lam, donor=donor,
        angle=float(rng.uniform(-ROTATION_DEG, ROTATION_DEG)), zoom=float(rng.uniform(1 - ZOOM, 1 + ZOOM)),
        shift=(float(rng.uniform(-SHIFT, SHIFT) * VIEW_PX), float(rng.uniform(-SHIFT, SHIFT) * VIEW_PX)),
        flip=bool(rng.random() < 0.5), gain=float(rng.uniform(1 - GAIN, 1 + GAIN)),
        bias=float(rng.uniform(-BIAS, BIAS)), saturation=float(rng.uniform(1 - SATURATION, 1 + SATURATION)),
        gray=bool(rng.random() < GRAY_P),
        blur=float(rng.uniform(*BLUR_SIGMA)) if rng.random() < BLUR_P else 0.0,
        lowres=int(rng.integers(LOWRES_PX[0], LOWRES_PX[1] + 1)) if rng.random() < LOWRES_P else 0)


def view_key(shas: list[str], spec: ViewSpec, seed: int) -> str:
    """The cache key of a view: a sha256 of the version, the seed and the images it is made of."""
    parts = [VIEWS_VERSION, str(seed), shas[spec.image], str(spec.number),
             shas[spec.partner] if spec.partner >= 0 else "-", shas[spec.donor] if spec.donor >= 0 else "-"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


_MASK: np.ndarray | None = None


def _mask() -> np.ndarray:
    global _MASK
    if _MASK is None:
        _MASK = face_mask(VIEW_PX, 1.0).numpy()[:, :, None]
    return _MASK


def render_view(faces: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """uint8 (112, 112, 3): the view ``spec`` of the aligned faces ``faces`` uint8 (N, 112, 112, 3)."""
    if faces.shape[1:] != (VIEW_PX, VIEW_PX, 3):
        raise ValueError(f"views are made from aligned faces of {VIEW_PX} px, got {faces.shape[1:]}")
    img = faces[spec.image].astype(np.float32)
    if spec.partner >= 0:
        img = spec.lam * img + (1 - spec.lam) * faces[spec.partner].astype(np.float32)
    if spec.donor >= 0:
        m = _mask()
        img = img * m + faces[spec.donor].astype(np.float32) * (1 - m)
    c = VIEW_PX / 2
    a = cv2.getRotationMatrix2D((c, c), spec.angle, spec.zoom)
    a[:, 2] += spec.shift
    img = cv2.warpAffine(img, a, (VIEW_PX, VIEW_PX), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    if spec.flip:
        img = img[:, ::-1]
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = grey[:, :, None] + (img - grey[:, :, None]) * (0.0 if spec.gray else spec.saturation)
    img = img * spec.gain + spec.bias
    if spec.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), spec.blur)
    if spec.lowres:
        small = cv2.resize(img, (spec.lowres, spec.lowres), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (VIEW_PX, VIEW_PX), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(np.clip(img, 0, 255).round().astype(np.uint8))


def student_copy(view: np.ndarray, crop_fraction: float, out_px: int) -> np.ndarray:
    """The student's input made from a rendered view: its central ``crop_fraction`` at ``out_px``, as the
    student's faces are made at embedding time."""
    side = view.shape[0]
    c = round(side * crop_fraction)
    off = (side - c) // 2
    crop = view[off : off + c, off : off + c]
    return crop if c == out_px else cv2.resize(crop, (out_px, out_px), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class TeacherViews:
    """``per_image`` views of every pool image: the aligned faces they are made from uint8 (N, 112, 112, 3),
    their specs (N x per_image, row-major: view ``k`` of image ``i`` is ``specs[i * per_image + k]``) and the
    teacher's embeddings of them float32 (N x per_image, Dt) in the same order."""

    faces: np.ndarray
    specs: list[ViewSpec]
    teacher: np.ndarray
    per_image: int

    def student_images(self, rows: np.ndarray, crop_fraction: float, out_px: int) -> np.ndarray:
        """uint8 (len(rows), out_px, out_px, 3): the student's copies of views ``rows``."""
        return np.stack([student_copy(render_view(self.faces, self.specs[int(r)]), crop_fraction, out_px)
                         for r in rows])
