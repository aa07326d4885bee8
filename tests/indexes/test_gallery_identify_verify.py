"""identify / verify: template aggregation (max, mean) and open-set rejection against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from gallery_testlib import MODEL, brute_identities, gallery, noisy, unit_rows

from indexes import UNKNOWN, GalleryStore, IndexConfig, StoreError


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    rng = np.random.default_rng(11)
    store = GalleryStore.create(tmp_path_factory.mktemp("g") / "store", model_version=MODEL, embedding_dim=24,
                                threshold=0.6, index=IndexConfig(segment_rows=64, max_segments=3))
    emb, names, paths, shas = gallery(rng, 90, 24, max_templates=4)
    for a in range(0, len(names), 40):
        store.enroll(emb[a:a + 40], names[a:a + 40], paths[a:a + 40], shas[a:a + 40], model_version=MODEL)
    return store, emb, names, rng


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("top_k", [1, 5, 200])
def test_identify_ranks_identities_like_numpy(enrolled, aggregation: str, top_k: int) -> None:
    store, emb, names, rng = enrolled
    queries = np.vstack([noisy(rng, emb[::9], 0.05), unit_rows(rng, 6, 24)])
    frame = store.identify(queries, model_version=MODEL, top_k=top_k, aggregation=aggregation, threshold=0.5)
    assert list(frame.columns) == ["query_index", "rank", "identity", "score", "decision"]
    assert frame["score"].dtype == np.float32 and frame["query_index"].dtype == np.int64
    expected = brute_identities(queries, emb, names, aggregation)
    for qi, ranking in enumerate(expected):
        got = frame[frame["query_index"] == qi]
        want = ranking[:top_k]
        assert got["rank"].tolist() == list(range(1, len(want) + 1))
        assert got["identity"].tolist() == [name for name, _ in want]
        np.testing.assert_allclose(got["score"].to_numpy(), [s for _, s in want], atol=1e-5)
        decision = want[0][0] if want[0][1] >= 0.5 else UNKNOWN
        assert set(got["decision"]) == {decision}


def test_mean_and_max_differ_on_constructed_case(tmp_path) -> None:
    # "a" has one perfect template and three poor ones; "b" has three good ones.
    rng = np.random.default_rng(5)
    q = unit_rows(rng, 1, 16)
    a = np.vstack([q, -q, -q, -q])
    b = noisy(rng, np.repeat(q, 3, axis=0), 0.6)
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=16)
    emb = np.vstack([a, b]).astype(np.float32)
    names = ["a"] * 4 + ["b"] * 3
    store.enroll(emb, names, [f"p{i}" for i in range(7)], [f"{i:064x}" for i in range(7)], model_version=MODEL)
    by_max = store.identify(q, model_version=MODEL, top_k=2, threshold=0.0)
    by_mean = store.identify(q, model_version=MODEL, top_k=2, threshold=0.0, aggregation="mean")
    assert by_max["identity"].tolist() == ["a", "b"] and by_mean["identity"].tolist() == ["b", "a"]
    np.testing.assert_allclose(by_mean["score"].iloc[1], (1 - 3) / 4, atol=1e-6)


def test_open_set_threshold_from_store_and_argument(enrolled) -> None:
    store, emb, names, rng = enrolled
    genuine = noisy(rng, emb[:1], 0.01)
    stranger = unit_rows(rng, 1, 24)
    frame = store.identify(np.vstack([genuine, stranger]), model_version=MODEL, top_k=3)  # store threshold 0.6
    decisions = frame.groupby("query_index")["decision"].first().tolist()
    assert decisions == [names[0], UNKNOWN]
    strict = store.identify(genuine, model_version=MODEL, top_k=3, threshold=0.999999)
    assert set(strict["decision"]) == {UNKNOWN}


def test_threshold_required_when_store_has_none(tmp_path) -> None:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=8)
    rng = np.random.default_rng(0)
    store.enroll(unit_rows(rng, 1, 8), ["x"], ["x.jpg"], ["a" * 64], model_version=MODEL)
    with pytest.raises(StoreError, match="set_threshold"):
        store.identify(unit_rows(rng, 1, 8), model_version=MODEL)
    store.set_threshold(0.3)
    assert GalleryStore.open(tmp_path / "g").threshold == 0.3
    assert len(store.identify(unit_rows(rng, 1, 8), model_version=MODEL)) == 1
    with pytest.raises(StoreError, match="aggregation='median'"):
        store.identify(unit_rows(rng, 1, 8), model_version=MODEL, aggregation="median")


def test_identify_empty_store_is_an_error(tmp_path) -> None:
    store = GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=8, threshold=0.5)
    with pytest.raises(StoreError, match="empty"):
        store.identify(unit_rows(np.random.default_rng(0), 1, 8), model_version=MODEL)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_verify_scores_claims_like_numpy(enrolled, aggregation: str) -> None:
    store, emb, names, rng = enrolled
    labels = np.asarray(names, dtype=object)
    queries = noisy(rng, emb[:30], 0.3)
    claims = [names[i] if i % 3 else names[(i * 7) % len(names)] for i in range(30)]
    claims[4] = "not-enrolled"
    frame = store.verify(queries, claims, model_version=MODEL, threshold=0.4, aggregation=aggregation)
    assert list(frame.columns) == ["query_index", "claimed_identity", "score", "threshold", "match", "known"]
    for i, claim in enumerate(claims):
        row = frame.iloc[i]
        if claim == "not-enrolled":
            assert not row["known"] and not row["match"] and np.isnan(row["score"])
            continue
        sims = emb[labels == claim].astype(np.float64) @ queries[i].astype(np.float64)
        expected = sims.max() if aggregation == "max" else sims.mean()
        assert row["known"] and abs(row["score"] - expected) < 1e-5
        assert row["match"] == (row["score"] >= 0.4)


def test_verify_validates_claims(enrolled) -> None:
    store, emb, names, rng = enrolled
    with pytest.raises(StoreError, match="claimed_identities has 1 values"):
        store.verify(emb[:2], ["x"], model_version=MODEL, threshold=0.5)
    with pytest.raises(StoreError, match="threshold=1.5"):
        store.verify(emb[:1], ["x"], model_version=MODEL, threshold=1.5)
