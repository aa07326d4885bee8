"""Tiered compaction: bounded segment count, search results preserved, write cost of an enrol bounded."""

from __future__ import annotations

import numpy as np
import pytest
from gallery_testlib import MODEL, brute_topk, gallery, unit_rows

from indexes import GalleryStore, IndexConfig
from indexes.writer import is_small, plan_auto_compaction, plan_full_compaction


def test_plan_auto_compaction_merges_smallest_similar_sizes() -> None:
    config = IndexConfig(segment_rows=100, max_segments=3)
    assert plan_auto_compaction([100, 1, 1, 1], config) == []
    assert plan_auto_compaction([100, 5, 1, 1, 1], config) == [2, 3, 4]  # 1+1 merged, then the next 1; 5 > 3
    assert plan_auto_compaction([100, 1, 2, 3, 40], config) == [1, 2, 3]
    assert plan_auto_compaction([60, 70, 80, 90], config) == []  # sealed segments are never merged automatically
    assert plan_full_compaction([100, 60, 3], config) == [1, 2]
    assert plan_full_compaction([100, 100, 7], config) == []


def test_auto_compaction_bounds_small_segments(tmp_path) -> None:
    config = IndexConfig(segment_rows=16, max_segments=3)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=8, index=config)
    emb, names, paths, shas = gallery(np.random.default_rng(0), 60, 8, max_templates=1)
    for i in range(len(names)):  # one image per enrol: the worst case for segment count
        store.enroll(emb[i:i + 1], names[i:i + 1], paths[i:i + 1], shas[i:i + 1], model_version=MODEL)
        rows = store.info()["segment_rows"]
        assert sum(is_small(r, config) for r in rows) <= config.max_segments
    assert len(store) == len(names) and store.info()["segments"] <= len(names) // 8 + config.max_segments
    store.verify_integrity()


def test_compaction_preserves_search_results(tmp_path) -> None:
    rng = np.random.default_rng(1)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=16,
                                index=IndexConfig(segment_rows=50, max_segments=50))
    emb, names, paths, shas = gallery(rng, 80, 16)
    for a in range(0, len(names), 7):
        store.enroll(emb[a:a + 7], names[a:a + 7], paths[a:a + 7], shas[a:a + 7], model_version=MODEL)
    store.remove_identity(names[3])
    queries = unit_rows(rng, 9, 16)
    before = store.search(queries, 12, model_version=MODEL)
    identified = store.identify(queries, model_version=MODEL, top_k=4, threshold=0.2, aggregation="mean")
    segments_before = store.info()["segments"]
    store.compact()
    info = store.info()
    assert info["segments"] < segments_before and all(r == 50 for r in info["segment_rows"][:-1])
    after = store.search(queries, 12, model_version=MODEL)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)
    assert identified.equals(store.identify(queries, model_version=MODEL, top_k=4, threshold=0.2, aggregation="mean"))
    # and still equal to the numpy reference
    keep = [i for i, n in enumerate(names) if n != names[3]]
    ids = store.metadata()["row_id"].to_numpy()
    ref_s, ref_pos = brute_topk(queries, emb[keep], 12)
    np.testing.assert_array_equal(after[1], ids[ref_pos])
    generation = info["generation"]
    store.compact()  # already compact: no new commit
    assert store.info()["generation"] == generation
    store.verify_integrity()


@pytest.mark.parametrize("rows", [1, 40])
def test_delete_rewrites_only_the_segments_holding_the_identity(tmp_path, rows: int) -> None:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=8,
                                index=IndexConfig(segment_rows=64, max_segments=8))
    emb, names, paths, shas = gallery(np.random.default_rng(2), 60, 8, max_templates=1)
    store.enroll(emb[:rows], names[:rows], paths[:rows], shas[:rows], model_version=MODEL)
    store.enroll(emb[rows:], names[rows:], paths[rows:], shas[rows:], model_version=MODEL)
    files_before = {f.name for seg in store._current().manifest.segments for f in seg.files()}
    store.remove_identity(names[-1])  # lives in the second segment only
    files_after = {f.name for seg in store._current().manifest.segments for f in seg.files()}
    segments = store._current().manifest.segments
    assert {segments[0].vectors.name, segments[0].metadata.name} <= files_before & files_after
    assert len(files_before - files_after) == 2
