"""Synthetic 'raw photos' with known faces: real LFW faces pasted on cluttered backgrounds, with ground truth.

Each pasted face is a feathered ellipse around the face of a 250x250 LFW photo, scaled to a face width of
40-400 px, rotated in plane by up to +-30 degrees and placed without overlapping the others. The ground truth is
the paste transform (source px -> canvas px) and the landmarks the detector found on the source photo mapped
through it. Variants: colour, grey, low contrast, and no face at all. Everything is seeded.

Used by tests/pipeline/faces and bench/faces_probe.py.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.faces.align import apply_affine
from pipeline.faces.detect import FaceDetector
from pipeline.faces.quality import interocular_px

VARIANTS = ("colour", "grey", "low_contrast", "no_face")
VARIANT_WEIGHTS = (0.58, 0.15, 0.15, 0.12)
FACE_COUNT_WEIGHTS = {1: 0.2, 2: 0.4, 3: 0.4}
MIN_FACE_W, MAX_FACE_W = 40.0, 400.0
MAX_ROTATION_DEG = 30.0
MAX_CANVAS_SIDE = 1280


@dataclass(frozen=True, eq=False)
class SourceFace:
    """A face on an original LFW photo: uint8 (250, 250, 3) RGB, its box (x, y, w, h) and (5, 2) landmarks."""

    path: str
    image: np.ndarray
    box: tuple[float, float, float, float]
    landmarks: np.ndarray


@dataclass(frozen=True, eq=False)
class PastedFace:
    """Ground truth of one pasted face.

    Attributes:
        source: LFW path.
        matrix: float64 (2, 3) source px -> canvas px (similarity).
        landmarks: float32 (5, 2) ground-truth landmarks on the canvas.
        face_width_px: source box width times the scale.
        rotation_deg: in-plane rotation applied.
    """

    source: str
    matrix: np.ndarray
    landmarks: np.ndarray
    face_width_px: float
    rotation_deg: float

    @property
    def interocular_px(self) -> float:
        return interocular_px(self.landmarks)


@dataclass(frozen=True, eq=False)
class SynthPhoto:
    """uint8 (H, W, 3) RGB canvas, its faces' ground truth, its variant and seed."""

    image: np.ndarray
    faces: list[PastedFace] = field(default_factory=list)
    variant: str = "colour"
    seed: int = 0


def lfw_paths(lfw_root: str | os.PathLike[str]) -> list[str]:
    """All ``*.jpg`` under ``lfw_root``, sorted."""
    root = Path(lfw_root)
    return sorted(str(p) for p in root.glob("*/*.jpg"))


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file (OpenCV decoder; tests and bench only)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot decode {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def load_sources(paths: Sequence[str], detector: FaceDetector, n: int, seed: int = 0,
                 min_score: float = 0.85) -> list[SourceFace]:
    """Pick ``n`` LFW photos at random (seeded) on which ``detector`` finds exactly one confident face."""
    rng = np.random.default_rng(seed)
    out: list[SourceFace] = []
    for i in rng.permutation(len(paths)):
        try:
            rgb = read_rgb(paths[int(i)])
        except OSError:
            continue
        dets = detector.detect(rgb)
        if len(dets) != 1 or dets[0].score < min_score:
            continue
        out.append(SourceFace(paths[int(i)], rgb, dets[0].box, dets[0].landmarks.astype(np.float32)))
        if len(out) >= n:
            break
    return out


# ----------------------------------------------------------------------------------------------- backgrounds
def _smooth_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 (h, w, 3) multi-scale coloured noise in [0, 255]."""
    acc = np.zeros((h, w, 3), np.float32)
    for cell in (128, 48, 16, 5):
        gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
        acc += cv2.resize(rng.normal(0, 1, (gh, gw, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) \
            * rng.uniform(0.3, 1.0)
    acc -= acc.min()
    acc *= 255.0 / max(float(acc.max()), 1e-6)
    return acc


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(ang) + yy * math.sin(ang)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]).astype(np.float32)


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    period = rng.uniform(6, 80)
    t = xx * math.cos(ang) + yy * math.sin(ang)
    wave = np.sin(2 * math.pi * t / period) if rng.random() < 0.5 else np.sign(np.sin(2 * math.pi * t / period))
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    m = (wave[..., None] + 1) / 2
    return (a * m + b * (1 - m)).astype(np.float32)


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    """Draw random rectangles, circles, ellipses, lines and polygons on ``img`` in place."""
    h, w = img.shape[:2]
    for _ in range(count):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 5)
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        size = int(rng.integers(4, max(5, min(h, w) // 3)))
        if kind == 0:
            cv2.rectangle(img, p, (p[0] + size, p[1] + int(rng.integers(4, size + 5))), colour, -1 if rng.random() < .6
                          else int(rng.integers(1, 6)))
        elif kind == 1:
            cv2.circle(img, p, size // 2, colour, -1 if rng.random() < 0.6 else int(rng.integers(1, 6)))
        elif kind == 2:
            cv2.ellipse(img, p, (size // 2, max(1, int(size * rng.uniform(0.2, 0.8)) // 2)), float(rng.uniform(0, 180)),
                        0, 360, colour, -1)
        elif kind == 3:
            q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p, q, colour, int(rng.integers(1, 8)))
        else:
            pts = (np.array(p) + rng.integers(-size, size + 1, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], colour)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3) cluttered background: noise, gradient or stripes, plus shapes and sensor noise."""
    kind = rng.integers(0, 3)
    base = (_smooth_noise, _gradient, _stripes)[kind](rng, h, w)
    if rng.random() < 0.5:
        base = 0.6 * base + 0.4 * _smooth_noise(rng, h, w)
    _clutter(rng, base, int(rng.integers(0, 60)))
    base += rng.normal(0, rng.uniform(0, 8), base.shape).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- pasting
def _face_mask(src: SourceFace) -> np.ndarray:
    """float32 (250, 250) feathered ellipse around the face (1 inside)."""
    h, w = src.image.shape[:2]
    x, y, bw, bh = src.box
    mask = np.zeros((h, w), np.float32)
    centre = (int(round(x + bw / 2)), int(round(y + bh / 2)))
    axes = (int(round(0.62 * bw)), int(round(0.58 * bh)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    k = max(3, int(0.12 * bw) | 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


def _footprint_radius(src: SourceFace, scale: float) -> float:
    _, _, bw, bh = src.box
    return 0.62 * max(bw, bh) * scale


def paste(canvas: np.ndarray, src: SourceFace, centre: tuple[float, float], face_width: float,
          rotation_deg: float) -> PastedFace:
    """Paste ``src``'s face on ``canvas`` (in place) with its box centre at ``centre``; returns the ground truth."""
    x, y, bw, bh = src.box
    s = face_width / bw
    c_src = np.array([x + bw / 2, y + bh / 2])
    img = src.image.astype(np.float32)
    mask = _face_mask(src)
    pre = np.eye(3)
    if s < 0.8:  # downscale with area averaging first: warpAffine's bilinear would alias
        nw, nh = max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / src.image.shape[1], nh / src.image.shape[0]
        pre = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
    th = math.radians(rotation_deg)
    r = s * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    full = np.eye(3)
    full[:2, :2] = r
    full[:2, 2] = np.asarray(centre) - r @ c_src  # source px -> canvas px
    rest = (full @ np.linalg.inv(pre))[:2]  # pre-resized px -> canvas px
    h, w = canvas.shape[:2]
    warped = cv2.warpAffine(img, rest, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpAffine(mask, rest, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    out = canvas.astype(np.float32) * (1 - alpha) + warped * alpha
    canvas[:] = np.clip(out, 0, 255).astype(np.uint8)
    m = full[:2].copy()
    return PastedFace(src.path, m, apply_affine(m, src.landmarks).astype(np.float32), float(face_width),
                      float(rotation_deg))


def _place(rng: np.random.Generator, sources: Sequence[SourceFace], n_faces: int
           ) -> tuple[int, int, list[tuple[SourceFace, float, float, tuple[float, float]]]]:
    """Choose canvas size, faces, widths, rotations and non-overlapping centres."""
    for _attempt in range(100):
        widths = np.exp(rng.uniform(math.log(MIN_FACE_W), math.log(MAX_FACE_W), n_faces))
        picks = [sources[int(i)] for i in rng.choice(len(sources), n_faces, replace=False)]
        radii = [_footprint_radius(p, wd / p.box[2]) for p, wd in zip(picks, widths, strict=True)]
        need = 2 * max(radii) + 10
        w = int(rng.uniform(max(480, need), max(need, MAX_CANVAS_SIDE) + 1))
        aspect = rng.choice([0.75, 1.0, 1.333])
        h = int(max(need, min(MAX_CANVAS_SIDE, w * aspect), 360))
        if max(w, h) > MAX_CANVAS_SIDE or sum(math.pi * r * r for r in radii) > 0.6 * w * h:
            continue
        placed: list[tuple[SourceFace, float, float, tuple[float, float]]] = []
        centres: list[tuple[float, float, float]] = []
        for p, wd, rad in sorted(zip(picks, widths, radii, strict=True), key=lambda t: -t[2]):
            for _try in range(60):
                cx, cy = rng.uniform(rad, w - rad), rng.uniform(rad, h - rad)
                if all(math.hypot(cx - ox, cy - oy) > rad + orad + 4 for ox, oy, orad in centres):
                    centres.append((cx, cy, rad))
                    placed.append((p, float(wd), float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)), (cx, cy)))
                    break
            else:
                break
        if len(placed) == n_faces:
            return w, h, placed
    raise RuntimeError("could not place faces (sources too few?)")


def make_photo(sources: Sequence[SourceFace], seed: int, *, variant: str | None = None,
               n_faces: int | None = None) -> SynthPhoto:
    """One synthetic photo (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    v = variant or str(rng.choice(VARIANTS, p=VARIANT_WEIGHTS))
    if v == "no_face":
        w = int(rng.integers(320, MAX_CANVAS_SIDE + 1))
        h = int(np.clip(w * rng.choice([0.75, 1.0, 1.333]), 240, MAX_CANVAS_SIDE))
        return SynthPhoto(background(rng, h, w), [], v, seed)
    k = n_faces or int(rng.choice(list(FACE_COUNT_WEIGHTS), p=list(FACE_COUNT_WEIGHTS.values())))
    w, h, placed = _place(rng, sources, k)
    canvas = background(rng, h, w)
    faces = [paste(canvas, src, centre, wd, rot) for src, wd, rot, centre in placed]
    if v == "grey":
        canvas = np.repeat(cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    elif v == "low_contrast":
        c = rng.uniform(0.25, 0.45)
        mean = canvas.reshape(-1, 3).mean(axis=0)
        shift = rng.uniform(-40, 40)
        canvas = np.clip((canvas.astype(np.float32) - mean) * c + mean + shift, 0, 255).astype(np.uint8)
    return SynthPhoto(canvas, faces, v, seed)


def generate(sources: Sequence[SourceFace], n: int, seed: int = 0) -> Iterator[SynthPhoto]:
    """``n`` photos with seeds ``seed*100003 + i``."""
    for i in range(n):
        yield make_photo(sources, seed * 100003 + i)


# ----------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Match:
    """A ground-truth face matched to a detection: normalised mean error of the five landmarks."""

    face: int
    detection: int
    nme: float


def match_detections(faces: Sequence[PastedFace], landmarks: Sequence[np.ndarray],
                     tol: float = 0.5) -> tuple[list[Match], list[int]]:
    """Greedy match of detections (their (5, 2) landmarks) to ground truth by landmark centroid distance.

    A pair matches when the centroids are within ``tol`` x the ground-truth inter-ocular distance and the
    inter-ocular distances agree within a factor 3 (YuNet's landmarks on small rotated faces can be poor while
    the face is found).

    Returns:
        (matches, indices of unmatched detections = false detections).
    """
    pairs = []
    for i, f in enumerate(faces):
        gt = f.landmarks.astype(np.float64)
        iod = interocular_px(gt)
        for j, lm in enumerate(landmarks):
            d = float(np.hypot(*(np.asarray(lm, np.float64).mean(axis=0) - gt.mean(axis=0))))
            ratio = interocular_px(lm) / max(iod, 1e-6)
            if d <= tol * iod and 1 / 3 <= ratio <= 3.0:
                nme = float(np.linalg.norm(np.asarray(lm, np.float64) - gt, axis=1).mean() / iod)
                pairs.append((d / iod, i, j, nme))
    pairs.sort()
    used_f: set[int] = set()
    used_d: set[int] = set()
    matches = []
    for _, i, j, nme in pairs:
        if i in used_f or j in used_d:
            continue
        used_f.add(i)
        used_d.add(j)
        matches.append(Match(i, j, nme))
    return matches, [j for j in range(len(landmarks)) if j not in used_d]


def raw_photo(src: SourceFace, rng: np.random.Generator) -> np.ndarray:
    """A "raw photo" of ``src``'s face: pasted on clutter (480-900 x 560-1100 px) at a random place, face width
    90-300 px (log-uniform), turned in plane by up to 30 degrees. The one-shot raw-photo tests and
    bench/raw_photo_gap.py use it."""
    width = float(math.exp(rng.uniform(math.log(90), math.log(300))))
    h, w = int(rng.integers(480, 900)), int(rng.integers(560, 1100))
    r = 0.62 * max(src.box[2], src.box[3]) * width / src.box[2]
    centre = (float(rng.uniform(r, max(r + 1, w - r))), float(rng.uniform(r, max(r + 1, h - r))))
    canvas = background(rng, h, w)
    paste(canvas, src, centre, width, float(rng.uniform(-30, 30)))
    return canvas
