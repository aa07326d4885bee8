"""Files edited or damaged without a size change are caught the first time their bytes are read.

Opening checks sizes and headers only (the vectors are not read); the sha256 of each file is compared
with manifest.json when its bytes are first read: the Parquet metadata and the ANN files at open, the
vectors when a search or lookup first touches them (or while they are copied into the arena), and
before a delete, compaction or ANN build copies them into a new file -- so a damaged segment is never
served, and never laundered into a new file with a fresh, valid sha256.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from gallery_testlib import MODEL, brute_topk, sha, unit_rows

from indexes import GalleryStore, IndexConfig, StoreCorrupt
from indexes.segments import map_vectors, read_vectors_into

DIM = 8
RESTORE = "restore the store directory from a backup"
SEGMENTS = (["a0", "a0", "a1", "a2", "a3", "a4", "a5", "a6"], ["b0", "b1", "b2"], ["c0", "c1"])


def rows(rng: np.random.Generator, names: list[str], tag: str) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    paths = [f"{tag}/{i}.jpg" for i in range(len(names))]
    return unit_rows(rng, len(names), DIM), names, paths, [sha(p) for p in paths]


def build(path: Path, kind: str = "flat") -> tuple[GalleryStore, np.ndarray]:
    """Segments of 8, 3 and 2 rows (identities a*, b*, c*), no automatic compaction; for "hnsw", compacted
    (segments of 8 and 5 rows with ANN files) plus a 2-row segment d* searched exactly."""
    config = IndexConfig(kind=kind, segment_rows=8, max_segments=2, ann_min_rows=4, recall_queries=8)
    store = GalleryStore.create(path, model_version=MODEL, embedding_dim=DIM, threshold=0.5, index=config)
    rng = np.random.default_rng(5)
    batches = [rows(rng, names, f"batch{b}") for b, names in enumerate(SEGMENTS)]
    for batch in batches:
        store.enroll(*batch, model_version=MODEL)
    if kind == "hnsw":
        store.compact()
        batches.append(rows(rng, ["d0", "d1"], "batch3"))
        store.enroll(*batches[-1], model_version=MODEL)
        assert [seg.ann is not None for seg in store._current().manifest.segments] == [True, True, False]
    else:
        assert store.info()["segment_rows"] == [8, 3, 2]
    return store, np.concatenate([b[0] for b in batches])


def segment_file(store: GalleryStore, identity: str, suffix: str) -> Path:
    """The file (".npy", ".parquet" or ".faiss") of the segment holding `identity`."""
    seg = next(seg for seg in store._current().segments if identity in seg.distinct_identities().to_pylist())
    files = {".npy": seg.entry.vectors, ".parquet": seg.entry.metadata, ".faiss": seg.entry.ann and seg.entry.ann.file}
    return store.path / files[suffix].name


def flip_byte(path: Path, from_end: int = 3) -> None:
    """Invert one byte in place (same size, same inode): an edit or bit rot that no size check sees."""
    with open(path, "r+b") as handle:
        handle.seek(-from_end, 2)
        byte = handle.read(1)
        handle.seek(-from_end, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))


def disk_state(path: Path) -> dict[str, str]:
    """sha256 of every file of the store (manifest.json included)."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def generation(path: Path) -> int:
    return json.loads((path / "manifest.json").read_text())["generation"]


def corrupt(damaged: Path) -> AbstractContextManager[pytest.ExceptionInfo[StoreCorrupt]]:
    """Expect the StoreCorrupt that names `damaged`, both digests' prefixes and the remedy."""
    return pytest.raises(StoreCorrupt, match=rf"{damaged.name} has sha256 [0-9a-f]{{16}}\.\.\., manifest\.json records "
                                             rf"[0-9a-f]{{16}}\.\.\. .*; {RESTORE}")


QUERIES = unit_rows(np.random.default_rng(9), 4, DIM)


# ----------------------------------------------------------------- vectors (.npy)
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_damaged_vectors_open_cheaply_then_fail_the_first_search(tmp_path: Path, kind: str) -> None:
    store, _ = build(tmp_path / "g", kind)
    damaged = segment_file(store, "c0" if kind == "flat" else "d0", ".npy")  # "hnsw": the exactly searched one
    flip_byte(damaged)
    reopened = GalleryStore.open(store.path)  # sizes and header agree: the vectors are not read
    assert len(reopened) == store.info()["rows"] and "c0" in reopened.identities()
    reopened.info()
    reopened.metadata()
    assert not any(seg.vectors_verified for seg in reopened._current().segments)
    with corrupt(damaged):
        reopened.search(QUERIES, 3, model_version=MODEL)
    with corrupt(damaged):  # still refused: the failure is not cached as a success
        reopened.identify(QUERIES, model_version=MODEL)
    with corrupt(damaged):
        store.search(QUERIES, 3, model_version=MODEL)  # the writing handle had not read this segment either


def test_damaged_vectors_behind_an_ann_index_fail_every_read_of_them(tmp_path: Path) -> None:
    store, emb = build(tmp_path / "g", "hnsw")
    damaged = segment_file(store, "a0", ".npy")
    flip_byte(damaged)
    reopened = GalleryStore.open(store.path)
    scores, ids = reopened.search(emb[:1], 3, model_version=MODEL)  # served by the (verified) ANN file
    assert ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert reopened.identify(emb[:1], model_version=MODEL)["identity"].iloc[0] == "a0"  # max: no template read
    with corrupt(damaged):
        reopened.identify(emb[:1], model_version=MODEL, aggregation="mean")  # reads a0's templates from the .npy
    with corrupt(damaged):
        reopened.verify(emb[:1], ["a0"], model_version=MODEL)
    with corrupt(damaged):
        reopened.get_embeddings([0])
    reopened.verify(emb[8:9], ["b0"], model_version=MODEL)  # other segments are served


def test_lookups_before_the_first_search_verify_only_what_they_read(tmp_path: Path) -> None:
    store, emb = build(tmp_path / "g")
    damaged = segment_file(store, "a0", ".npy")
    flip_byte(damaged)
    reopened = GalleryStore.open(store.path)
    np.testing.assert_array_equal(reopened.get_embeddings([8, 9]), emb[8:10])  # the b* segment is intact
    assert reopened.verify(emb[8:9], ["b0"], model_version=MODEL)["match"].item()
    with corrupt(damaged):
        reopened.get_embeddings([0])
    with corrupt(damaged):
        reopened.verify(emb[:1], ["a0"], model_version=MODEL)


WRITES = {
    "remove a1": ("a0", lambda s: s.remove_identity("a1")),  # copy-on-write rewrite of the 8-row segment
    "remove b0": ("b0", lambda s: s.remove_identity("b0")),
    "compact": ("c0", lambda s: s.compact()),  # merges the 3- and 2-row segments
}


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_writes_never_copy_damaged_vectors_and_leave_the_store_unchanged(tmp_path: Path, kind: str, write: str
                                                                         ) -> None:
    identity, operation = WRITES[write]
    store, _ = build(tmp_path / "g", kind)
    if kind == "hnsw" and write == "compact":
        identity = "d0"  # compacted already: the next compaction merges the 5- and 2-row segments
    damaged = segment_file(store, identity, ".npy")
    flip_byte(damaged)
    before, gen = disk_state(store.path), generation(store.path)
    with corrupt(damaged):
        operation(GalleryStore.open(store.path))
    assert generation(store.path) == gen and disk_state(store.path) == before


def test_an_automatic_compaction_after_an_enrol_never_merges_damaged_vectors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, _ = build(tmp_path / "g")
    damaged = segment_file(store, "c0", ".npy")
    flip_byte(damaged)
    handle = GalleryStore.open(store.path)
    # the enrol commits and returns (it is durable: raising would make callers retry it); its automatic
    # compaction refuses to copy c*, says so in the log, and the next read of c* raises
    added = handle.enroll(*rows(np.random.default_rng(1), ["e0", "e1"], "late"), model_version=MODEL)
    assert len(added.added) == 2
    assert f"{damaged.name} has sha256" in caplog.text and "automatic compaction" in caplog.text
    with corrupt(damaged):
        handle.search(QUERIES, k=3, model_version=MODEL)
    reopened = GalleryStore.open(store.path)
    assert "e0" in reopened.identities() and reopened.info()["segment_rows"] == [8, 3, 2, 2]
    assert damaged.relative_to(store.path).as_posix() in reopened._current().manifest.referenced_files()
    with pytest.raises(StoreCorrupt, match=f"{damaged.name} has sha256"):
        reopened.verify_integrity()


def test_building_an_ann_index_never_reads_damaged_vectors(tmp_path: Path) -> None:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=DIM,
                                index=IndexConfig(segment_rows=8, ann_min_rows=4, recall_queries=8))
    store.enroll(*rows(np.random.default_rng(2), [f"x{i}" for i in range(8)], "x"), model_version=MODEL)
    damaged = store.path / store._current().manifest.segments[0].vectors.name
    flip_byte(damaged)
    handle = GalleryStore.open(store.path)
    handle.set_index_config(IndexConfig(kind="hnsw", segment_rows=8, ann_min_rows=4, recall_queries=8))
    before, gen = disk_state(store.path), generation(store.path)
    with corrupt(damaged):
        handle.compact()  # the 8-row segment is sealed: compact() only builds its ANN index
    assert generation(store.path) == gen and disk_state(store.path) == before


def test_reading_into_the_arena_hashes_the_file_or_the_mapping(tmp_path: Path) -> None:
    store, emb = build(tmp_path / "g")
    entry = store._current().manifest.segments[2]
    path = store.path / entry.vectors.name
    mapped = map_vectors(store.path, entry, DIM)
    out = np.empty_like(mapped)
    read_vectors_into(store.path, entry, mapped, out)
    np.testing.assert_array_equal(out, emb[11:13])
    flip_byte(path)
    with corrupt(path):
        read_vectors_into(store.path, entry, mapped, out)
    read_vectors_into(store.path, entry, mapped, out, verify=False)  # a segment already verified: plain copy
    path.unlink()  # a later commit replaced it: the mapping (same damaged bytes) is copied and hashed
    with corrupt(path):
        read_vectors_into(store.path, entry, mapped, out)


# ----------------------------------------------------------------- metadata (.parquet) and ANN (.faiss)
@pytest.mark.parametrize(("kind", "suffix"), [("flat", ".parquet"), ("hnsw", ".parquet"), ("hnsw", ".faiss")])
def test_damaged_metadata_or_ann_file_is_caught_when_read_at_open(tmp_path: Path, kind: str, suffix: str) -> None:
    store, emb = build(tmp_path / "g", kind)
    damaged = segment_file(store, "b0", suffix)
    expected = store.search(emb[8:11], 2, model_version=MODEL)
    flip_byte(damaged, from_end=damaged.stat().st_size // 2)
    before, gen = disk_state(store.path), generation(store.path)
    with corrupt(damaged):  # these files are read (and now hashed) to open the store
        GalleryStore.open(store.path)
    assert generation(store.path) == gen and disk_state(store.path) == before
    # a handle that read them before the damage serves its verified copy, and a delete writes that copy
    for got, want in zip(store.search(emb[8:11], 2, model_version=MODEL), expected):
        np.testing.assert_array_equal(got, want)
    assert store.remove_identity("b1") == 1
    reopened = GalleryStore.open(store.path)
    reopened.verify_integrity()
    assert damaged.name not in {Path(n).name for n in reopened._current().manifest.referenced_files()}
    assert sorted(reopened.identities()) == sorted({n for names in SEGMENTS for n in names} - {"b1"}
                                                   | ({"d0", "d1"} if kind == "hnsw" else set()))


# ----------------------------------------------------------------- undamaged stores
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_an_intact_store_serves_the_same_results_and_hashes_each_segment_once(tmp_path: Path, kind: str) -> None:
    store, emb = build(tmp_path / "g", kind)
    reopened = GalleryStore.open(store.path)
    with mock.patch("indexes.segments.hashlib.sha256", wraps=hashlib.sha256) as hashed:
        scores, ids = reopened.search(QUERIES, 5, model_version=MODEL)
        first = hashed.call_count
        again = reopened.search(QUERIES, 5, model_version=MODEL)
        reopened.identify(QUERIES, model_version=MODEL)
        assert hashed.call_count == first  # verified once per loaded segment
    assert first == (3 if kind == "flat" else 1)  # "hnsw": only the segment without an ANN index is read
    want_scores, want_ids = brute_topk(QUERIES, emb, 5)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    np.testing.assert_array_equal(again[1], ids)
    assert reopened.remove_identity("a1") == 1 and "a1" not in reopened.identities()
    reopened.compact()
    reopened.verify_integrity()
