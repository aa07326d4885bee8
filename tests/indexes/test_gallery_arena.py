"""The arena (contiguous in-memory vectors of all segments): placement, reuse of freed ranges, rebuilds."""

from __future__ import annotations

import numpy as np
from gallery_testlib import MODEL, brute_topk, gallery, unit_rows

from indexes import GalleryStore, IndexConfig
from indexes.arena import Arena
from indexes.manifest import FileEntry, SegmentEntry


def entry(sid: str, rows: int) -> SegmentEntry:
    f = FileEntry(name=f"segments/{sid}.npy", size=0, sha256="0" * 64)
    return SegmentEntry(id=sid, rows=rows, min_row_id=0, max_row_id=rows - 1, vectors=f, metadata=f)


def fill_with_id(e: SegmentEntry, out: np.ndarray) -> None:
    out[:] = float(int(e.id, 16))


def check_consistent(arena: Arena, entries: list[SegmentEntry]) -> None:
    covered = np.zeros(arena.used, bool)
    for e in entries:
        view = arena.view(e.id)
        assert view.shape == (e.rows, 2) and np.all(view == float(int(e.id, 16)))
        start = arena.start(e.id)
        assert not covered[start: start + e.rows].any()
        covered[start: start + e.rows] = True
    for a, b in arena.holes():
        assert not covered[a:b].any()
    assert covered.sum() + sum(b - a for a, b in arena.holes()) == arena.used


def test_arena_reuses_freed_ranges_and_rebuilds_when_fragmented() -> None:
    arena = Arena(2)
    live = [entry("a", 5000), entry("b", 3000)]
    arena.place(live, fill_with_id)
    check_consistent(arena, live)
    start_b = arena.start("b")
    live = [live[0], entry("c", 2990)]  # "b" rewritten without 10 rows: goes back in place
    arena.place(live, fill_with_id)
    check_consistent(arena, live)
    assert arena.start("c") == start_b and arena.holes() == [(start_b + 2990, start_b + 3000)]
    live = [entry("d", 100)]  # most rows freed: rebuilt compactly
    arena.place(live, fill_with_id)
    check_consistent(arena, live)
    assert arena.used == 100 and arena.holes() == []
    arena.place([], fill_with_id)
    assert arena.used == 0


def test_search_stays_exact_through_many_deletes_and_enrols(tmp_path) -> None:
    rng = np.random.default_rng(8)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=16,
                                index=IndexConfig(segment_rows=40, max_segments=3))
    emb, names, paths, shas = gallery(rng, 120, 16, max_templates=2)
    store.enroll(emb, names, paths, shas, model_version=MODEL)
    reader = GalleryStore.open(tmp_path / "g")  # a second handle follows the commits with its own arena
    live = list(range(len(names)))
    queries = unit_rows(rng, 5, 16)
    for step, victim in enumerate(sorted(set(names))[::2]):
        store.remove_identity(victim)
        live = [i for i in live if names[i] != victim]
        if step % 5 == 0:
            extra = unit_rows(rng, 2, 16)
            res = store.enroll(extra, [f"new{step}"] * 2, [f"n{step}a", f"n{step}b"],
                               [f"{step:064x}", f"{step + 999:064x}"],
                               model_version=MODEL)
            emb = np.vstack([emb, extra])
            names += [f"new{step}"] * 2
            live += [len(names) - 2, len(names) - 1]
            assert len(res.added) == 2
        row_of = dict(zip(store.metadata()["image_path"], store.metadata()["row_id"]))
        all_paths = paths + [p for s in range(0, step + 1, 5) for p in (f"n{s}a", f"n{s}b")]
        expected_ids = np.array([row_of[all_paths[i]] for i in live])
        ref_s, ref_pos = brute_topk(queries, emb[live], 8)
        for handle in (store, reader):
            scores, ids = handle.search(queries, 8, model_version=MODEL)
            np.testing.assert_array_equal(ids, expected_ids[ref_pos])
            np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    store.verify_integrity()


def test_vectors_are_read_only_when_a_search_needs_them(tmp_path) -> None:
    rng = np.random.default_rng(10)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=8)
    emb, names, paths, shas = gallery(rng, 20, 8)
    store.enroll(emb, names, paths, shas, model_version=MODEL)
    reopened = GalleryStore.open(tmp_path / "g")
    reopened.enroll(unit_rows(rng, 1, 8), ["late"], ["late.jpg"], ["f" * 64], model_version=MODEL)
    reopened.remove_identity(names[0])
    reopened.info()
    assert not reopened._current().materialized  # enrol / remove / info never loaded the vectors
    reopened.search(emb[:1], 3, model_version=MODEL)
    assert reopened._current().materialized
    reopened.enroll(unit_rows(rng, 1, 8), ["later"], ["later.jpg"], ["e" * 64], model_version=MODEL)
    assert reopened._current().materialized  # later commits update the arena incrementally


def test_materialize_copies_from_the_mapping_when_the_file_is_gone(tmp_path) -> None:
    from indexes.segments import map_vectors, read_vectors_into

    rng = np.random.default_rng(11)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=8)
    emb, names, paths, shas = gallery(rng, 5, 8)
    store.enroll(emb, names, paths, shas, model_version=MODEL)
    entry = store._current().manifest.segments[0]
    mapped = map_vectors(store.path, entry, 8)
    out = np.empty_like(mapped)
    read_vectors_into(store.path, entry, mapped, out)
    np.testing.assert_array_equal(out, emb)
    (store.path / entry.vectors.name).unlink()
    out[:] = 0
    read_vectors_into(store.path, entry, mapped, out)
    np.testing.assert_array_equal(out, emb)
