"""Reopen round-trip, corruption detection, model-version refusal, locking, crash safety (kill -9 loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gallery_testlib import MODEL, gallery, sha, unit_rows

from indexes import (
    GalleryStore,
    IndexConfig,
    ModelVersionMismatch,
    StoreCorrupt,
    StoreError,
    StoreLocked,
)
from indexes.atomic import StoreLock

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def filled_store(tmp_path, n_identities: int = 30, dim: int = 16) -> tuple[GalleryStore, np.ndarray]:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=dim, threshold=0.4,
                                model_path="/models/m1", index=IndexConfig(segment_rows=20, max_segments=2))
    emb, names, paths, shas = gallery(np.random.default_rng(7), n_identities, dim)
    for a in range(0, len(names), 15):
        store.enroll(emb[a:a + 15], names[a:a + 15], paths[a:a + 15], shas[a:a + 15], model_version=MODEL)
    return store, emb


def segment_file(store: GalleryStore, suffix: str) -> Path:
    return store.path / next(f.name for seg in store._current().manifest.segments for f in seg.files()
                             if f.name.endswith(suffix))


def test_reopen_round_trip(tmp_path) -> None:
    store, emb = filled_store(tmp_path)
    queries = unit_rows(np.random.default_rng(1), 4, 16)
    before = store.search(queries, 7, model_version=MODEL)
    again = GalleryStore.open(tmp_path / "g", model_version=MODEL)
    after = again.search(queries, 7, model_version=MODEL)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert again.metadata().equals(store.metadata())
    properties = (again.model_version, again.embedding_dim, again.threshold, again.model_path)
    assert properties == (MODEL, 16, 0.4, "/models/m1")
    info = again.info()
    json.dumps(info)
    assert info["schema_version"] == 1 and info["rows"] == len(emb) and info["bytes_on_disk"] > emb.nbytes
    again.verify_integrity()


def test_readers_see_commits_of_other_handles(tmp_path) -> None:
    store, emb = filled_store(tmp_path)
    reader = GalleryStore.open(tmp_path / "g")
    store.enroll(unit_rows(np.random.default_rng(2), 1, 16), ["newcomer"], ["n.jpg"], [sha("n")], model_version=MODEL)
    assert "newcomer" in reader.identities() and len(reader) == len(emb) + 1


def test_create_refuses_non_empty_path_and_open_refuses_non_store(tmp_path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not an empty directory"):
        GalleryStore.create(tmp_path / "busy", model_version=MODEL, embedding_dim=4)
    with pytest.raises(StoreError, match="not a gallery store"):
        GalleryStore.open(tmp_path / "busy")
    with pytest.raises(StoreError, match="does not exist"):
        GalleryStore.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert len(GalleryStore.create(tmp_path / "empty", model_version=MODEL, embedding_dim=4)) == 0


def test_model_version_mismatch_is_refused_with_advice(tmp_path) -> None:
    store, emb = filled_store(tmp_path)
    with pytest.raises(ModelVersionMismatch, match="re-embed the gallery") as err:
        GalleryStore.open(tmp_path / "g", model_version="model-v2")
    assert "model-v2" in str(err.value) and MODEL in str(err.value) and "/models/m1" in str(err.value)
    for call in (lambda: store.search(emb[:1], 1, model_version="model-v2"),
                 lambda: store.identify(emb[:1], model_version="model-v2"),
                 lambda: store.verify(emb[:1], ["x"], model_version="model-v2"),
                 lambda: store.enroll(emb[:1], ["x"], ["x"], [sha("x")], model_version="model-v2")):
        with pytest.raises(ModelVersionMismatch, match="retrain flow"):
            call()


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_truncated_file_is_detected_at_open(tmp_path, suffix: str) -> None:
    store, _ = filled_store(tmp_path)
    path = segment_file(store, suffix)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 7)
    with pytest.raises(StoreCorrupt, match=f"{path.name} is .* bytes but manifest.json records"):
        GalleryStore.open(tmp_path / "g")


def test_missing_file_and_damaged_manifest_are_detected(tmp_path) -> None:
    store, _ = filled_store(tmp_path)
    path = segment_file(store, ".parquet")
    path.rename(path.with_suffix(".moved"))
    with pytest.raises(StoreCorrupt, match=f"{path.name} is listed .* but missing"):
        GalleryStore.open(tmp_path / "g")
    (tmp_path / "g" / "manifest.json").write_text('{"format": "facepipe-gallery-store", "schema_version": 1')
    with pytest.raises(StoreCorrupt, match="not valid JSON"):
        GalleryStore.open(tmp_path / "g")


def test_content_damage_same_size_is_caught_by_verify_integrity(tmp_path) -> None:
    store, _ = filled_store(tmp_path)
    path = segment_file(store, ".npy")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    reopened = GalleryStore.open(tmp_path / "g")  # cheap checks pass: sizes and shapes agree
    with pytest.raises(StoreCorrupt, match=f"{path.name} has sha256 .* records"):
        reopened.verify_integrity()
    # the vectors are hashed as the first search reads them, so the damage is never served either
    queries = unit_rows(np.random.default_rng(1), 2, 16)
    with pytest.raises(StoreCorrupt, match=f"{path.name} has sha256 .* records .*restore the store directory"):
        reopened.search(queries, 3, model_version=MODEL)
    with pytest.raises(StoreCorrupt, match=f"{path.name} has sha256"):
        GalleryStore.open(tmp_path / "g").identify(queries, model_version=MODEL)


def test_wrong_shape_in_vectors_is_detected(tmp_path) -> None:
    store, _ = filled_store(tmp_path)
    path = segment_file(store, ".npy")
    rows = np.load(path).shape[0]
    np.save(path, np.zeros((rows * 2, 8), np.float32))  # same byte count, different shape
    with pytest.raises(StoreCorrupt, match=r"header or size is not that of float32 \(15, 16\) as manifest"):
        GalleryStore.open(tmp_path / "g")


def test_orphans_of_an_interrupted_write_are_collected_at_open(tmp_path) -> None:
    store, _ = filled_store(tmp_path)
    orphan = tmp_path / "g" / "segments" / ("ab" * 16 + ".npy")
    orphan.write_bytes(b"partial")
    stale = tmp_path / "g" / "manifest.json.tmp-1234"
    stale.write_text("{}")
    GalleryStore.open(tmp_path / "g")
    assert not orphan.exists() and not stale.exists()


def test_writer_lock_times_out_with_store_locked(tmp_path) -> None:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=4, lock_timeout_s=0.2)
    with StoreLock(tmp_path / "g" / "LOCK", 1.0):
        with pytest.raises(StoreLocked, match="another process is writing"):
            store.enroll(unit_rows(np.random.default_rng(0), 1, 4), ["a"], ["a"], [sha("a")], model_version=MODEL)
        # readers take no lock
        assert len(GalleryStore.open(tmp_path / "g")) == 0
    store.enroll(unit_rows(np.random.default_rng(0), 1, 4), ["a"], ["a"], [sha("a")], model_version=MODEL)
    assert len(store) == 1


def _worker_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}


def test_concurrent_writers_are_serialised(tmp_path) -> None:
    import gallery_workers

    GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=gallery_workers.DIM,
                        index=IndexConfig(segment_rows=16, max_segments=3))
    procs = [subprocess.Popen([sys.executable, str(HERE / "gallery_workers.py"), "enroll", str(tmp_path / "g"), prefix,
                               "15"], env=_worker_env()) for prefix in ("left", "right")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{p}").exists() for p in ("left", "right")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = GalleryStore.open(tmp_path / "g")
    meta = store.metadata()
    assert len(meta) == 2 * 15 * 3 and meta["row_id"].is_unique
    assert store.identities() == sorted(f"{p}{b}" for p in ("left", "right") for b in range(15))
    np.testing.assert_array_equal(store.get_embeddings(meta["row_id"].to_numpy()),
                                  np.stack([gallery_workers.vector_for(s) for s in meta["image_sha256"]]))
    store.verify_integrity()


def test_readers_never_see_a_half_write(tmp_path) -> None:
    import gallery_workers

    GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=gallery_workers.DIM,
                        index=IndexConfig(segment_rows=12, max_segments=2))
    writer = subprocess.Popen([sys.executable, str(HERE / "gallery_workers.py"), "churn", str(tmp_path / "g"), "3"],
                              env=_worker_env())
    reader = GalleryStore.open(tmp_path / "g")
    checks = 0
    try:
        while writer.poll() is None:
            fresh = GalleryStore.open(tmp_path / "g")  # open races with commits and garbage collection
            for store in (reader, fresh):  # `reader` refreshes itself when the manifest changes
                snap = store._current()  # one generation: everything below must agree
                meta = snap.metadata_table().to_pandas()
                assert len(meta) == snap.manifest.rows == snap.rows
                assert meta.groupby("identity").size().eq(3).all()  # an enrol call is never seen in part
                if len(meta):
                    stored = snap.embeddings(meta["row_id"].to_numpy())
                    expected = np.stack([gallery_workers.vector_for(s) for s in meta["image_sha256"]])
                    np.testing.assert_array_equal(stored, expected)
                checks += 1
    finally:
        assert writer.wait(timeout=60) == 0
    assert checks > 10


@pytest.mark.slow
def test_kill_9_loop_leaves_old_or_new_state(tmp_path) -> None:
    result = subprocess.run([sys.executable, str(HERE / "gallery_workers.py"), "crash-loop", str(tmp_path / "g"), "60",
                             "20240601"], env=_worker_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("60 kills")
    rolled_back = int(result.stdout.split("(")[1].split()[0])
    assert rolled_back > 0, result.stdout  # the kills did land inside writes
