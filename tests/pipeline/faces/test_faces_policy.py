"""Quality measures, subject selection, and every outcome of FaceAligner in enrolment and query mode."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import synth
from synth import read_rgb

from pipeline.core.errors import ConfigError, ImageError
from pipeline.faces import AlignerConfig, Detection, FaceAligner, FacePolicy, Mode
from pipeline.faces.align import ARCFACE_TEMPLATE_112, apply_affine, warp_to_template
from pipeline.faces.detect import FaceDetector
from pipeline.faces.policy import select_subject
from pipeline.faces.quality import interocular_px, roll_deg, sharpness, yaw_deg, yaw_ratio


# ----------------------------------------------------------------------------------------------- helpers
class StubDetector:
    """Returns fixed detections: the policy logic is tested without YuNet."""

    name = "stub"
    version = "stub:0"

    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, image: np.ndarray) -> list[Detection]:
        return list(self.detections)


def face_at(cx: float, cy: float, iod: float, *, score: float = 0.92, nose_shift: float = 0.0) -> Detection:
    """A detection with template-shaped landmarks centred at (cx, cy) with eye distance ``iod``."""
    t = ARCFACE_TEMPLATE_112.astype(np.float64)
    s = iod / interocular_px(t)
    lm = (t - t.mean(axis=0)) * s + [cx, cy]
    lm[2, 0] += nose_shift * iod
    w = 112 * s * 0.85
    box = (cx - w / 2, cy - w * 0.65, w, w * 1.3)
    return Detection(box=box, landmarks=lm.astype(np.float32), score=score)


def textured(h: int = 400, w: int = 400, seed: int = 0) -> np.ndarray:
    """Shapes with soft (1 px) edges: about as sharp as an LFW face under the sharpness measure."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 128, np.uint8)
    for _ in range(60):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.circle(img, p, int(rng.integers(3, max(4, w // 6))), c, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, p, (p[0] + int(rng.integers(3, w // 4)), p[1] + int(rng.integers(3, h // 4))), c, -1)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def stub_aligner(dets: list[Detection], **policy: float) -> FaceAligner:
    return FaceAligner(AlignerConfig(policy=FacePolicy(**policy)), detector=StubDetector(dets))


# ----------------------------------------------------------------------------------------------- measures
def test_yaw_roll_interocular_on_template_shapes() -> None:
    t = ARCFACE_TEMPLATE_112
    assert abs(yaw_deg(t)) < 2 and abs(roll_deg(t)) < 1
    assert interocular_px(t) == pytest.approx(35.24, abs=0.01)
    # yaw and its sign do not depend on in-plane rotation or scale
    turned = t.copy()
    turned[2, 0] += 0.3 * interocular_px(t)
    a = math.radians(25)
    rot = np.array([[3 * math.cos(a), -3 * math.sin(a), 40], [3 * math.sin(a), 3 * math.cos(a), 10]])
    assert yaw_ratio(apply_affine(rot, turned)) == pytest.approx(yaw_ratio(turned), abs=1e-9)
    assert yaw_deg(turned) > 25
    other_way = t.copy()
    other_way[2, 0] -= 0.3 * interocular_px(t)
    assert yaw_deg(other_way) < -25
    assert roll_deg(apply_affine(rot, t)) == pytest.approx(25 + roll_deg(t), abs=1e-6)


def test_sharpness_drops_with_blur_not_with_contrast() -> None:
    crop = textured(112, 112)
    sharp = sharpness(crop)
    assert sharp > 0.3
    assert sharpness(cv2.GaussianBlur(crop, (0, 0), 3)) < 0.2 * sharp
    low = (crop.astype(np.float32) * 0.3 + 80).astype(np.uint8)
    assert sharpness(low) == pytest.approx(sharp, rel=0.2)
    assert sharpness(np.full((112, 112, 3), 128, np.uint8)) == 0.0
    big = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC)  # other sizes are measured at 112 px
    assert sharpness(big) == pytest.approx(sharp, rel=0.35)


def test_policy_validation() -> None:
    with pytest.raises(ConfigError, match="min_score"):
        FacePolicy(min_score=-1)
    with pytest.raises(ConfigError, match="dominance_margin"):
        FacePolicy(dominance_margin=0.5)
    with pytest.raises(ConfigError, match="centrality_weight"):
        FacePolicy(centrality_weight=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FacePolicy().min_score = 0.1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="mode"):
        AlignerConfig(mode="train")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="size_px"):
        AlignerConfig(size_px=4)
    with pytest.raises(ConfigError, match="face mode"):
        FaceAligner(AlignerConfig(), detector=StubDetector([])).align_image(textured(), mode="train")


def test_select_subject_prefers_large_and_central() -> None:
    pol = FacePolicy()
    big_corner, mid_centre = face_at(100, 100, 40), face_at(200, 200, 34)
    choice = select_subject([big_corner, mid_centre], (400, 400, 3), pol)
    assert choice.index == 1 and choice.ambiguous  # central one wins, but not by the margin
    lone = select_subject([face_at(200, 200, 40), face_at(350, 350, 12)], (400, 400, 3), pol)
    assert lone.index == 0 and not lone.ambiguous and lone.dominance is not None and lone.dominance > 3
    assert select_subject([face_at(10, 10, 5)], (400, 400, 3), pol).dominance is None


# ----------------------------------------------------------------------------------------------- outcomes
def test_accepted_outcome_has_crop_detection_and_quality() -> None:
    out = stub_aligner([face_at(200, 200, 60)], min_sharpness=0.0).align_image(textured())
    assert out.accepted and out.reject_code is None and out.faces_found == 1
    assert out.crop is not None and out.crop.shape == (112, 112, 3) and out.crop.dtype == np.uint8
    assert out.detection is not None
    assert set(out.quality) == {"interocular_px", "face_width_px", "score", "sharpness", "yaw_deg", "roll_deg"}
    assert out.quality["interocular_px"] == pytest.approx(60, abs=0.01)


def test_no_face_on_noise(aligner: FaceAligner) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for mode in Mode:
        out = aligner.align_image(noise, mode=mode)
        assert not out.accepted and out.reject_code == "no_face" and out.faces_found == 0 and out.crop is None


def test_several_faces_enrol_rejects_query_flags() -> None:
    twins = [face_at(120, 200, 50), face_at(280, 200, 50)]
    enrol = stub_aligner(twins, min_sharpness=0.0).align_image(textured())
    assert not enrol.accepted and enrol.reject_code == "ambiguous" and enrol.faces_found == 2
    assert "2 faces" in enrol.reject_reason and "x1.00 < dominance_margin x1.30" in enrol.reject_reason
    query = stub_aligner(twins, min_sharpness=0.0).align_image(textured(), mode="query")
    assert query.accepted and query.flags == ("ambiguous",) and query.crop is not None
    dominant = stub_aligner([face_at(200, 200, 60), face_at(40, 40, 15)], min_sharpness=0.0).align_image(textured())
    assert dominant.accepted and dominant.faces_found == 2 and dominant.quality["dominance"] > 1.3


@pytest.mark.parametrize(("det", "policy", "code", "text"), [
    (face_at(200, 200, 14), {}, "too_small", "interocular distance 14.0 px < min_interocular_px 20"),
    (face_at(200, 200, 60, score=0.61), {}, "low_score", "detection score 0.610 < min_score 0.75"),
    (face_at(200, 200, 60, nose_shift=0.6), {}, "yaw", "|yaw| 47.5 deg > max_abs_yaw_deg 40"),
])
def test_quality_rejects_name_value_and_limit(det: Detection, policy: dict[str, float], code: str, text: str) -> None:
    enrol = stub_aligner([det], min_sharpness=0.0, **policy).align_image(textured())
    assert not enrol.accepted and enrol.reject_code == code and enrol.crop is None
    assert enrol.reject_reason == f"{code}: {text}"
    query = stub_aligner([det], min_sharpness=0.0, **policy).align_image(textured(), mode=Mode.QUERY)
    assert query.accepted and query.flags == (code,)


def test_blurry_and_several_failures_are_all_listed() -> None:
    flat = cv2.GaussianBlur(textured(), (0, 0), 8)
    out = stub_aligner([face_at(200, 200, 14, score=0.5)]).align_image(flat)
    assert out.reject_code == "too_small"
    assert [r.split(":")[0] for r in out.reject_reason.split("; ")] == ["too_small", "low_score", "blurry"]


def test_already_aligned_skips_detection() -> None:
    crop = textured(150, 150)
    al = FaceAligner(AlignerConfig(size_px=96), detector=StubDetector([]))
    out = al.align_image(crop, already_aligned=True)
    assert out.accepted and out.crop.shape == (96, 96, 3) and out.detection is None and out.faces_found == 1
    assert set(out.quality) == {"sharpness"}
    blurred = al.align_image(cv2.GaussianBlur(crop, (0, 0), 6), already_aligned=True)
    assert not blurred.accepted and blurred.reject_code == "blurry"


def test_bad_input_raises_and_batch_records_it(tmp_path: Path) -> None:
    al = stub_aligner([face_at(200, 200, 60)], min_sharpness=0.0)
    with pytest.raises(ImageError):
        al.align_image(np.zeros((10, 10), np.float64))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    outs = al.align_batch([textured(), np.zeros((3, 3, 2), np.uint8), tmp_path / "broken.jpg", tmp_path / "gone.png"],
                          workers=2)
    assert [o.accepted for o in outs] == [True, False, False, False]
    assert [o.reject_code for o in outs[1:]] == ["unreadable"] * 3
    assert outs[2].source == str(tmp_path / "broken.jpg") and "not a recognised image" in outs[2].reject_reason


def test_version_names_detector_template_and_size() -> None:
    al = FaceAligner(AlignerConfig(size_px=128), detector=StubDetector([]))
    assert al.version == "stub:0;template=arcface112;size=128;warp=umeyama-linear"


# ----------------------------------------------------------------------------------------------- real faces
@pytest.mark.realdata
def test_lfw_photos_pass_enrolment(aligner: FaceAligner, lfw_sample: list[Path]) -> None:
    outs = aligner.align_batch(lfw_sample, workers=2)
    assert [o.source for o in outs] == [str(p) for p in lfw_sample]
    assert sum(o.accepted for o in outs) >= len(outs) - 2
    seq = [aligner.align_path(p) for p in lfw_sample[:4]]
    for a, b in zip(outs[:4], seq, strict=True):  # threads give the same answers
        assert a.accepted == b.accepted and a.quality == b.quality
    for o in outs:
        if o.accepted:
            assert o.crop.shape == (112, 112, 3)
            assert 0.15 < o.quality["sharpness"] and abs(o.quality["yaw_deg"]) < 40


@pytest.mark.realdata
def test_real_outcomes_blurry_small_yaw(aligner: FaceAligner, lfw_root: Path, lfw_sample: list[Path]) -> None:
    rgb = read_rgb(lfw_sample[0])
    blurred = aligner.align_image(cv2.GaussianBlur(rgb, (0, 0), 4))
    assert blurred.reject_code == "blurry", blurred.reject_reason
    assert aligner.align_image(cv2.GaussianBlur(rgb, (0, 0), 4), mode="query").flags == ("blurry",)
    tiny = aligner.align_image(cv2.resize(rgb, (80, 80), interpolation=cv2.INTER_AREA))
    assert tiny.faces_found >= 1 and tiny.reject_code == "too_small", tiny.reject_reason
    turned = aligner.align_image(read_rgb(lfw_root / "Bill_Clinton" / "Bill_Clinton_0023.jpg"))
    assert turned.reject_code == "yaw" and turned.quality["yaw_deg"] < -40, turned.reject_reason


@pytest.mark.realdata
def test_real_two_face_photo_is_ambiguous(aligner: FaceAligner, synth_sources: list[synth.SourceFace]) -> None:
    canvas = np.full((500, 800, 3), 120, np.uint8)
    synth.paste(canvas, synth_sources[0], (230, 250), 150, 0.0)
    synth.paste(canvas, synth_sources[1], (570, 250), 150, 0.0)
    out = aligner.align_image(canvas)
    assert out.faces_found == 2 and out.reject_code == "ambiguous", out.reject_reason
    lone = np.full((500, 800, 3), 120, np.uint8)
    synth.paste(lone, synth_sources[0], (400, 250), 200, 0.0)
    synth.paste(lone, synth_sources[1], (730, 100), 60, 0.0)
    chosen = aligner.align_image(lone)
    assert chosen.accepted and chosen.faces_found == 2, chosen.reject_reason
    assert abs(chosen.detection.center[0] - 400) < 30


def test_crop_is_rgb_and_matches_warp() -> None:
    img = textured()
    det = face_at(200, 200, 60)
    out = stub_aligner([det], min_sharpness=0.0).align_image(img)
    assert np.array_equal(out.crop, warp_to_template(img, det.landmarks, 112))


def test_detector_protocol_is_satisfied(yunet: FaceDetector) -> None:
    assert isinstance(yunet, FaceDetector) and isinstance(StubDetector([]), FaceDetector)
