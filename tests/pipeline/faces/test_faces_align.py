"""Umeyama similarity estimation, the ArcFace template, and warping (incl. parity with OpenCV's alignCrop)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.faces.align import (
    ARCFACE_TEMPLATE_112,
    alignment_matrix,
    apply_affine,
    template_for_size,
    umeyama,
    warp_to_template,
)
from pipeline.faces.weights import model_path


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


@pytest.mark.parametrize("seed", range(8))
def test_umeyama_recovers_known_similarity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = similarity(rng.uniform(0.1, 8), rng.uniform(-180, 180), *rng.uniform(-500, 500, 2))
    src = rng.uniform(0, 300, (int(rng.integers(2, 12)), 2))
    got = umeyama(src, apply_affine(m, src))
    np.testing.assert_allclose(got, m, atol=1e-8 * max(1.0, np.abs(m).max()))


def test_umeyama_least_squares_with_noise_and_rigid_mode() -> None:
    rng = np.random.default_rng(1)
    m = similarity(2.5, 33.0, 10.0, -4.0)
    src = rng.uniform(0, 100, (200, 2))
    dst = apply_affine(m, src) + rng.normal(0, 0.5, (200, 2))
    got = umeyama(src, dst)
    np.testing.assert_allclose(got[:, :2], m[:, :2], atol=0.01)
    np.testing.assert_allclose(got[:, 2], m[:, 2], atol=0.5)
    # it is the least-squares optimum among similarities: perturbing scale, angle or shift increases the residual
    scale, angle = math.hypot(got[0, 0], got[1, 0]), math.degrees(math.atan2(got[1, 0], got[0, 0]))
    best = np.square(apply_affine(got, src) - dst).sum()
    for d in np.vstack([np.eye(4), -np.eye(4)]) * 1e-3:
        other = similarity(scale + d[0], angle + d[1], got[0, 2] + d[2], got[1, 2] + d[3])
        assert np.square(apply_affine(other, src) - dst).sum() > best
    rigid = umeyama(src, apply_affine(similarity(1.0, -70.0, 3.0, 9.0), src), estimate_scale=False)
    np.testing.assert_allclose(rigid, similarity(1.0, -70.0, 3.0, 9.0), atol=1e-9)
    # scale is not fitted in rigid mode: the rotation part stays orthonormal
    r = umeyama(src, dst, estimate_scale=False)[:, :2]
    np.testing.assert_allclose(r @ r.T, np.eye(2), atol=1e-9)


def test_umeyama_never_reflects() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [7.0, 7.0]])
    mirrored = src * np.array([-1.0, 1.0])
    m = umeyama(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_umeyama_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="same shape"):
        umeyama(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="all the same"):
        umeyama(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ConfigError, match="non-finite"):
        umeyama(np.array([[0, 0], [1, np.nan]]), np.zeros((2, 2)))


def test_template_scales_with_size() -> None:
    np.testing.assert_allclose(template_for_size(112), ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(template_for_size(224), ARCFACE_TEMPLATE_112 * 2, rtol=1e-6)
    assert template_for_size(96).dtype == np.float32
    with pytest.raises(ConfigError):
        template_for_size(4)
    # the template's landmarks map to themselves
    np.testing.assert_allclose(alignment_matrix(ARCFACE_TEMPLATE_112), [[1, 0, 0], [0, 1, 0]], atol=1e-6)


def _marker_face(size: int = 112) -> np.ndarray:
    """A 'face' crop with a coloured disc on each template landmark (black elsewhere)."""
    img = np.zeros((size, size, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), c in zip(template_for_size(size), colours, strict=True):
        cv2.circle(img, (int(round(x)), int(round(y))), 3, c, -1, lineType=cv2.LINE_AA)
    return img


@pytest.mark.parametrize(("scale", "angle", "size"), [(3.0, 25.0, 112), (0.8, -30.0, 112), (2.0, 170.0, 160)])
def test_alignment_undoes_a_known_paste(scale: float, angle: float, size: int) -> None:
    """Paste the marker face into a large image with a known similarity; aligning with the mapped landmarks
    must give back the marker face."""
    face = _marker_face(112)
    paste = similarity(scale, angle, 300.0, 250.0)
    canvas = cv2.warpAffine(face, paste, (800, 800), flags=cv2.INTER_LINEAR)
    landmarks = apply_affine(paste, ARCFACE_TEMPLATE_112)
    crop = warp_to_template(canvas, landmarks, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    expected = cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR)
    for (x, y), ch in zip(template_for_size(size), [0, 1, 2, 0, 1], strict=True):
        patch = crop[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2, ch]
        assert patch.mean() > 120, (x, y, ch)
    # overall: the crop matches the original up to resampling
    assert np.abs(crop.astype(int) - expected.astype(int)).mean() < 6


def test_matches_opencv_alignCrop() -> None:
    """Identical to cv2.FaceRecognizerSF.alignCrop at 112 px (the SFace teacher's crop), up to rounding."""
    rng = np.random.default_rng(3)
    recognizer = cv2.FaceRecognizerSF.create(str(model_path("sface")), "")
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 2)
    for _ in range(5):
        m = similarity(rng.uniform(1.0, 2.5), rng.uniform(-40, 40), rng.uniform(60, 250), rng.uniform(40, 150))
        landmarks = (apply_affine(m, ARCFACE_TEMPLATE_112) + rng.normal(0, 2, (5, 2))).astype(np.float32)
        row = np.concatenate([[0, 0, 100, 100], landmarks.ravel(), [0.9]]).astype(np.float32)[None]
        ref = recognizer.alignCrop(image, row)
        ours = warp_to_template(image, landmarks, 112)
        diff = np.abs(ref.astype(int) - ours.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01


def test_other_sizes_are_the_same_framing() -> None:
    rng = np.random.default_rng(4)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), (0, 0), 3)
    landmarks = apply_affine(similarity(1.7, 12, 80, 60), ARCFACE_TEMPLATE_112)
    big = warp_to_template(image, landmarks, 224)
    small = warp_to_template(image, landmarks, 112)
    down = cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA)
    assert np.abs(down.astype(int) - small.astype(int)).mean() < 3
