"""Approximate indexes (HNSW, IVF): recall against exact search, deletes, reporting."""

from __future__ import annotations

import numpy as np
import pytest
from gallery_testlib import MODEL, gallery, noisy, store_files

from indexes import GalleryStore, IndexConfig, StoreError


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_store_recall_and_deletes(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(3)
    config = IndexConfig(kind=kind, segment_rows=1500, ann_min_rows=500, hnsw_m=16, ivf_nlist=16, nprobe=12,
                         recall_queries=200)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=32, threshold=0.5, index=config)
    emb, names, paths, shas = gallery(rng, 1100, 32, max_templates=3)
    store.enroll(emb, names, paths, shas, model_version=MODEL)
    assert store.info()["ann"]["segments_with_index"] == 0  # built by compact(), not on enrol
    store.compact()
    info = store.info()
    assert info["ann"]["segments_with_index"] >= 1 and info["ann"]["store_recall"]["recall"] >= 0.9
    assert any(p.suffix == ".faiss" for p in store_files(store.path))
    assert store.ann_recall(k=10, n_queries=100) >= 0.9
    # results are real rows with their true cosine scores
    queries = noisy(rng, emb[:50], 0.1)
    scores, ids = store.search(queries, 5, model_version=MODEL)
    meta = store.metadata().set_index("row_id")
    true = np.einsum("qkd,qd->qk", store.get_embeddings(ids.ravel()).reshape(50, 5, 32), queries)
    np.testing.assert_allclose(scores, true, atol=1e-5)
    assert (meta.loc[ids[:, 0], "identity"].to_numpy() == np.asarray(names[:50])).mean() >= 0.9
    # a delete drops the rewritten segment's ANN file with it: no copy of the embeddings survives
    victim = names[0]
    victim_rows = [i for i, n in enumerate(names) if n == victim]
    assert store.remove_identity(victim) == len(victim_rows)
    blobs = [p.read_bytes() for p in store_files(store.path)]
    assert not any(emb[i].tobytes() in blob for i in victim_rows for blob in blobs)
    _, ids = store.search(emb[victim_rows], 20, model_version=MODEL)
    assert victim not in set(store.metadata().set_index("row_id").loc[ids.ravel(), "identity"])
    assert store.info()["ann"]["rows_searched_exactly"] > 0
    store.compact()
    assert store.info()["ann"]["rows_searched_exactly"] < 500
    store.verify_integrity()
    GalleryStore.open(store.path).search(queries, 3, model_version=MODEL)


def test_flat_store_recall_is_exact_and_config_is_validated(tmp_path) -> None:
    rng = np.random.default_rng(4)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=8)
    emb, names, paths, shas = gallery(rng, 50, 8)
    store.enroll(emb, names, paths, shas, model_version=MODEL)
    assert store.ann_recall(k=5, n_queries=20) == 1.0 and store.info()["ann"] is None
    with pytest.raises(StoreError, match="kind='annoy' is not valid"):
        IndexConfig(kind="annoy")
    with pytest.raises(StoreError, match="segment_rows=0"):
        IndexConfig(segment_rows=0)


def test_switching_index_kind_builds_and_drops_ann(tmp_path) -> None:
    rng = np.random.default_rng(5)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=16,
                                index=IndexConfig(segment_rows=800, ann_min_rows=300))
    emb, names, paths, shas = gallery(rng, 300, 16)
    store.enroll(emb, names, paths, shas, model_version=MODEL)
    store.set_index_config(IndexConfig(kind="hnsw", segment_rows=800, ann_min_rows=300, recall_queries=50))
    store.compact()
    assert store.info()["ann"]["segments_with_index"] == 1
    store.set_index_config(IndexConfig(segment_rows=800, ann_min_rows=300))
    store.compact()
    assert not any(p.suffix == ".faiss" for p in store_files(store.path)) and store.info()["ann"] is None
