"""Pinned weights (sha256 at load), the detector registry, and YuNet on real LFW photos and synthetic raw photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import synth
from synth import read_rgb

import pipeline.faces.detect as detect_module
from pipeline.core.errors import ConfigError, FacepipeError, ImageError, ModelArtifactError
from pipeline.faces.detect import (
    Detection,
    FaceDetector,
    YuNetDetector,
    available_detectors,
    create_detector,
    register_detector,
)
from pipeline.faces.quality import interocular_px
from pipeline.faces.weights import MODEL_FILES, model_path, sha256_of, verify_file, weights_dir


# ----------------------------------------------------------------------------------------------- weights
def test_bundled_weights_match_pins() -> None:
    for key, entry in MODEL_FILES.items():
        p = model_path(key)
        assert p.name == entry.filename and p.parent == weights_dir()
        assert sha256_of(p) == entry.sha256


def test_tampered_weights_fail_with_one_line_naming_file_and_hashes(tmp_path: Path) -> None:
    bad = tmp_path / MODEL_FILES["yunet"].filename
    shutil.copyfile(model_path("yunet"), bad)
    with open(bad, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    actual = sha256_of(bad)
    with pytest.raises(ModelArtifactError) as info:
        YuNetDetector(model_path=bad)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(bad) in msg and MODEL_FILES["yunet"].sha256 in msg and actual in msg
    assert isinstance(info.value, FacepipeError)
    with pytest.raises(ModelArtifactError, match="cannot be read"):
        verify_file(tmp_path / "missing.onnx", "0" * 64)
    with pytest.raises(ModelArtifactError, match="unknown face model 'nope'; valid: sface, yunet"):
        model_path("nope")


def test_copy_with_right_hash_loads(tmp_path: Path, yunet: FaceDetector) -> None:
    good = tmp_path / "copy.onnx"
    shutil.copyfile(model_path("yunet"), good)
    det = YuNetDetector(model_path=good)
    assert det.version == f"yunet:copy.onnx@sha256:{MODEL_FILES['yunet'].sha256}"
    assert MODEL_FILES["yunet"].sha256 in yunet.version


# ----------------------------------------------------------------------------------------------- registry
def test_registry_lists_valid_names_and_rejects_bad_options() -> None:
    assert "yunet" in available_detectors()
    with pytest.raises(ConfigError, match=r"unknown face detector 'retina'; valid: .*yunet"):
        create_detector("retina")
    with pytest.raises(ConfigError, match="bad options"):
        create_detector("yunet", no_such_option=1)
    with pytest.raises(ConfigError, match="score_threshold"):
        create_detector("yunet", score_threshold=1.5)


def test_register_a_custom_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect_module, "_REGISTRY", dict(detect_module._REGISTRY))

    class Fixed:
        name = "fixed-test"
        version = "fixed-test:1"

        def detect(self, image: np.ndarray) -> list[Detection]:
            return []

    register_detector("fixed-test", Fixed)
    det = create_detector("fixed-test")
    assert isinstance(det, FaceDetector) and det.detect(np.zeros((4, 4, 3), np.uint8)) == []


def test_bad_arrays_raise_image_error(yunet: FaceDetector) -> None:
    with pytest.raises(ImageError, match="uint8"):
        yunet.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        yunet.detect(np.zeros((50, 50, 4), np.uint8))
    with pytest.raises(ImageError, match="numpy array"):
        yunet.detect([[1, 2]])  # type: ignore[arg-type]


def test_noise_has_no_face(yunet: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    for shape in [(240, 320, 3), (1500, 2000, 3), (40, 40, 3)]:
        assert yunet.detect(rng.integers(0, 256, shape, dtype=np.uint8)) == []


# ----------------------------------------------------------------------------------------------- real faces
def assert_plausible(d: Detection, image_shape: tuple[int, ...]) -> None:
    lm = d.landmarks
    assert lm.shape == (5, 2) and lm.dtype == np.float32
    x, y, w, h = d.box
    assert 0.5 <= d.score <= 1.0
    # every landmark inside the (slightly grown) box
    assert np.all(lm[:, 0] > x - 0.1 * w) and np.all(lm[:, 0] < x + 1.1 * w)
    assert np.all(lm[:, 1] > y - 0.1 * h) and np.all(lm[:, 1] < y + 1.1 * h)
    # image-left eye first, eyes above the nose above the mouth (upright LFW faces)
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
    assert 0.25 * w < interocular_px(lm) < 0.75 * w


@pytest.mark.realdata
def test_yunet_finds_the_lfw_face(yunet: FaceDetector, lfw_sample: list[Path]) -> None:
    for p in lfw_sample:
        rgb = read_rgb(p)
        dets = yunet.detect(rgb)
        assert dets, p
        centre = min(dets, key=lambda d: np.hypot(d.center[0] - 125, d.center[1] - 125))
        assert np.hypot(centre.center[0] - 125, centre.center[1] - 125) < 40, p
        assert_plausible(centre, rgb.shape)
        assert 25 < interocular_px(centre.landmarks) < 75


@pytest.mark.realdata
@pytest.mark.parametrize(("out_size", "shape_kind"), [(56, "small"), (2600, "large"), (250, "grey")])
def test_coordinates_map_back_after_rescaling(yunet: FaceDetector, lfw_sample: list[Path], out_size: int,
                                              shape_kind: str) -> None:
    """Small images are upscaled and large ones downscaled for detection: results come back in input pixels."""
    for p in lfw_sample[:6]:
        rgb = read_rgb(p)
        ref = max(yunet.detect(rgb), key=lambda d: d.box[2])
        if shape_kind == "grey":
            img = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        else:
            interp = cv2.INTER_AREA if out_size < 250 else cv2.INTER_CUBIC
            img = cv2.resize(rgb, (out_size, out_size), interpolation=interp)
        f = out_size / 250
        dets = yunet.detect(img)
        assert dets, p
        d = max(dets, key=lambda d: d.box[2])
        err = np.linalg.norm(d.landmarks / f - ref.landmarks, axis=1).mean() / interocular_px(ref.landmarks)
        assert err < 0.25, (p, err)
        assert abs(d.box[2] / f - ref.box[2]) < 0.25 * ref.box[2]


@pytest.mark.realdata
def test_yunet_on_synthetic_raw_photos(yunet: FaceDetector, synth_sources: list[synth.SourceFace]) -> None:
    found = total = false = 0
    for photo in synth.generate(synth_sources, 6, seed=11):
        assert photo.image.dtype == np.uint8 and photo.image.ndim == 3
        dets = yunet.detect(photo.image)
        matches, fps = synth.match_detections(photo.faces, [d.landmarks for d in dets])
        found, total, false = found + len(matches), total + len(photo.faces), false + len(fps)
    assert total >= 6 and found >= total - 1 and false <= 1


@pytest.mark.realdata
def test_synth_ground_truth_is_the_paste_transform(yunet: FaceDetector,
                                                   synth_sources: list[synth.SourceFace]) -> None:
    photo = synth.make_photo(synth_sources, 5, variant="colour", n_faces=2)
    assert len(photo.faces) == 2 and photo.variant == "colour"
    for face in photo.faces:
        src = next(s for s in synth_sources if s.path == face.source)
        m = face.matrix
        np.testing.assert_allclose(src.landmarks @ m[:, :2].T + m[:, 2], face.landmarks, atol=1e-3)
        scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        assert abs(scale * src.box[2] - face.face_width_px) < 1e-6
        assert synth.MIN_FACE_W <= face.face_width_px <= synth.MAX_FACE_W
        assert abs(face.rotation_deg) <= synth.MAX_ROTATION_DEG
    assert synth.make_photo(synth_sources, 5, variant="colour", n_faces=2).image.tobytes() == photo.image.tobytes()
    empty = synth.make_photo(synth_sources, 6, variant="no_face")
    assert empty.faces == []
    grey = synth.make_photo(synth_sources, 7, variant="grey")
    assert np.array_equal(grey.image[..., 0], grey.image[..., 2])
