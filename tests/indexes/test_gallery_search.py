"""Search results equal a brute-force numpy reference (seeded data, several sizes and batch shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from gallery_testlib import MODEL, brute_topk, gallery, unit_rows

from indexes import GalleryStore, IndexConfig, StoreError
from indexes import search as search_mod
from indexes.search import merge_topk, topk_1d, topk_inner_product


def assert_topk_matches(scores: np.ndarray, ids: np.ndarray, ref_scores: np.ndarray, ref_ids: np.ndarray) -> None:
    """Scores equal within float32 rounding; ids equal where the reference scores are not within 1e-5 of a
    neighbour (random floats make exact ties impossible, float32 rounding can swap near-equal scores)."""
    k = ref_ids.shape[1]
    np.testing.assert_allclose(scores[:, :k], ref_scores, atol=1e-5)
    gaps = np.diff(ref_scores, axis=1, prepend=np.inf, append=-np.inf)
    clear = (np.abs(gaps[:, :-1]) > 1e-5) & (np.abs(gaps[:, 1:]) > 1e-5)
    np.testing.assert_array_equal(ids[:, :k][clear], ref_ids[clear])
    for row, ref_row in zip(ids[:, :k], ref_ids):  # same set of rows (seeded data: no tie at the k-th place)
        assert sorted(row.tolist()) == sorted(ref_row.tolist())
    assert np.all(ids[:, k:] == -1) and np.all(np.isneginf(scores[:, k:]))


@pytest.mark.parametrize("n", [1, 50, 3000, 40000])
@pytest.mark.parametrize("q", [1, 7, 150])
def test_topk_inner_product_matches_numpy(n: int, q: int) -> None:
    rng = np.random.default_rng(n * 1000 + q)
    base, queries = unit_rows(rng, n, 16), unit_rows(rng, q, 16)
    for k in (1, 10, n + 3 if n <= 3000 else 1500):  # k > rows pads
        scores, idx = topk_inner_product(queries, base, k)
        assert scores.shape == (q, k) and scores.dtype == np.float32 and idx.dtype == np.int64
        assert_topk_matches(scores, idx, *brute_topk(queries, base, min(k, n)))


def test_blocked_path_over_several_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_mod, "_BLOCK_ELEMENTS", 4 * 1000)
    rng = np.random.default_rng(3)
    base, queries = unit_rows(rng, 5000, 8), unit_rows(rng, 4, 8)
    assert_topk_matches(*topk_inner_product(queries, base, 10), *brute_topk(queries, base, 10))


def test_topk_1d_sampled_bound_keeps_exact_result() -> None:
    rng = np.random.default_rng(4)
    scores = rng.standard_normal(200_000).astype(np.float32)
    scores[:1000] += 10  # the top rows cluster at the front: the strided sample must not miss them
    top, pos = topk_1d(scores, 25)
    expected = np.argsort(-scores)[:25]
    np.testing.assert_array_equal(pos, expected)
    np.testing.assert_array_equal(top, scores[expected])


def test_merge_topk_pads_and_orders() -> None:
    s, i = merge_topk([np.array([[0.9, 0.1]], np.float32), np.array([[0.5, -np.inf]], np.float32)],
                      [np.array([[3, 4]]), np.array([[7, -1]])], 4)
    np.testing.assert_array_equal(i, [[3, 7, 4, -1]])
    assert s[0, 3] == -np.inf


@pytest.mark.parametrize("rows_per_segment", [7, 1000])
def test_store_search_matches_numpy_over_segments(tmp_path, rows_per_segment: int) -> None:
    rng = np.random.default_rng(rows_per_segment)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=32,
                                index=IndexConfig(segment_rows=rows_per_segment, max_segments=4))
    emb, names, paths, shas = gallery(rng, 120, 32)
    added = []
    for a in range(0, len(names), 50):  # several enrol calls -> several segments
        res = store.enroll(emb[a:a + 50], names[a:a + 50], paths[a:a + 50], shas[a:a + 50], model_version=MODEL)
        added.append(res.added["row_id"].to_numpy())
    row_ids = np.concatenate(added)
    assert len(store) == len(names)
    for q in (1, 5, 140):
        queries = unit_rows(rng, q, 32)
        for k in (1, 10, len(names) + 5):
            scores, ids = store.search(queries, k, model_version=MODEL)
            ref_s, ref_pos = brute_topk(queries, emb, min(k, len(names)))
            assert_topk_matches(scores, ids, ref_s, row_ids[ref_pos])


def test_search_empty_store_pads(tmp_path) -> None:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=4)
    scores, ids = store.search(unit_rows(np.random.default_rng(0), 2, 4), 3, model_version=MODEL)
    assert ids.shape == (2, 3) and np.all(ids == -1) and np.all(np.isneginf(scores))


def test_search_rejects_bad_queries(tmp_path) -> None:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=4)
    good = unit_rows(np.random.default_rng(0), 2, 4)
    with pytest.raises(StoreError, match="float32"):
        store.search(good.astype(np.float64), 1, model_version=MODEL)
    with pytest.raises(StoreError, match=r"shape \[N, 4\]"):
        store.search(good[:, :3], 1, model_version=MODEL)
    with pytest.raises(StoreError, match="row 1 has L2 norm"):
        store.search(np.vstack([good[0], 2 * good[1]]), 1, model_version=MODEL)
    with pytest.raises(StoreError, match="k=0"):
        store.search(good, 0, model_version=MODEL)


@pytest.mark.parametrize("q", [1, 6])
def test_excluded_ranges_are_never_returned(q: int) -> None:
    rng = np.random.default_rng(9)
    base, queries = unit_rows(rng, 30000, 8), unit_rows(rng, q, 8)
    exclude = [(0, 5000), (12000, 12001), (29000, 30000)]
    keep = np.ones(30000, bool)
    for a, b in exclude:
        keep[a:b] = False
    kept = np.flatnonzero(keep)
    scores, idx = topk_inner_product(queries, base, 12, exclude)
    ref_s, ref_pos = brute_topk(queries, base[kept], 12)
    assert_topk_matches(scores, idx, ref_s, kept[ref_pos])
    # asking for more rows than remain pads instead of returning excluded rows
    scores, idx = topk_inner_product(queries, base[:5010], 20, [(0, 5000)])
    assert np.all(idx[:, 10:] == -1) and set(idx[0, :10].tolist()) == set(range(5000, 5010))
