"""Enrolment (validation, duplicates, row ids) and deletion (gone everywhere, bytes unrecoverable)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from gallery_testlib import MODEL, gallery, sha, store_files, unit_rows

from indexes import GalleryStore, IndexConfig, StoreError


def new_store(tmp_path, dim: int = 64, **config) -> GalleryStore:
    return GalleryStore.create(tmp_path / "g", model_version=MODEL, embedding_dim=dim, threshold=0.5,
                               index=IndexConfig(**config))


def test_enroll_reports_added_rows_and_metadata(tmp_path) -> None:
    store = new_store(tmp_path, dim=8)
    emb = unit_rows(np.random.default_rng(0), 3, 8)
    res = store.enroll(emb, ["ann", "bob", "ann"], ["a1.jpg", "b1.jpg", "a2.jpg"], [sha(s) for s in "abc"],
                       model_version=MODEL)
    assert res.added["row_id"].tolist() == [0, 1, 2] and res.added["identity"].tolist() == ["ann", "bob", "ann"]
    assert list(res.added.columns) == ["row_id", "identity", "image_path", "image_sha256"]
    assert res.duplicates.empty
    assert list(res.duplicates.columns) == ["image_path", "image_sha256", "existing_row_id", "existing_identity"]
    meta = store.metadata()
    assert list(meta.columns) == ["row_id", "identity", "image_path", "image_sha256", "enrolled_at", "model_version"]
    assert meta["row_id"].dtype == np.int64 and str(meta["enrolled_at"].dtype) == "datetime64[us, UTC]"
    assert set(meta["model_version"]) == {MODEL}
    assert store.identities() == ["ann", "bob"] and len(store) == 3
    np.testing.assert_array_equal(store.get_embeddings(np.array([2, 0])), emb[[2, 0]])
    info = store.info()
    assert info["rows"] == 3 and info["identities"] == 2 and info["index_type"] == "flat"


def test_duplicates_across_calls_and_within_a_call(tmp_path) -> None:
    store = new_store(tmp_path, dim=8)
    rng = np.random.default_rng(1)
    store.enroll(unit_rows(rng, 2, 8), ["ann", "bob"], ["a.jpg", "b.jpg"], [sha("a"), sha("b")], model_version=MODEL)
    res = store.enroll(unit_rows(rng, 4, 8), ["carl", "zed", "carl", "dan"],
                       ["c.jpg", "b-copy.jpg", "c-copy.jpg", "d.jpg"],
                       [sha("c"), sha("b").upper(), sha("c"), sha("d")], model_version=MODEL)
    assert res.added["image_path"].tolist() == ["c.jpg", "d.jpg"]
    dups = res.duplicates.set_index("image_path")
    assert dups.loc["b-copy.jpg", "existing_row_id"] == 1 and dups.loc["b-copy.jpg", "existing_identity"] == "bob"
    c_row = int(res.added.loc[res.added["image_path"] == "c.jpg", "row_id"].iloc[0])
    assert dups.loc["c-copy.jpg", "existing_row_id"] == c_row and dups.loc["c-copy.jpg", "existing_identity"] == "carl"
    assert len(store) == 4 and store.identities() == ["ann", "bob", "carl", "dan"]
    again = store.enroll(unit_rows(rng, 1, 8), ["ann"], ["a.jpg"], [sha("a")], model_version=MODEL)
    assert again.added.empty and len(again.duplicates) == 1 and len(store) == 4


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.astype(np.float64), "float32"),
    (lambda e: e[:, :5], r"shape \[N, 8\]"),
    (lambda e: np.where(np.arange(8) == 0, np.nan, e).astype(np.float32), "row 0 contains NaN"),
    (lambda e: (e * np.array([[1], [1], [3]], np.float32)), "row 2 has L2 norm 3"),
    (lambda e: np.vstack([e[:2], np.zeros((1, 8), np.float32)]), "row 2 has L2 norm 0"),
])
def test_enroll_rejects_bad_embeddings(tmp_path, mutate, message: str) -> None:
    store = new_store(tmp_path, dim=8)
    emb = unit_rows(np.random.default_rng(2), 3, 8)
    with pytest.raises(StoreError, match=message):
        store.enroll(mutate(emb), ["a", "b", "c"], ["1", "2", "3"], [sha(s) for s in "123"], model_version=MODEL)
    assert len(store) == 0


@pytest.mark.parametrize("names, paths, shas, message", [
    (["a", "", "c"], ["1", "2", "3"], None, r"identities\[1\]=''"),
    (["a", "unknown", "c"], ["1", "2", "3"], None, "reserved"),
    (["a", "b"], ["1", "2", "3"], None, "identities has 2 values"),
    (["a", "b", "c"], ["1", None, "3"], None, r"image_paths\[1\]=None"),
    (["a", "b", "c"], ["1", "2", "3"], ["x" * 64, sha("2"), sha("3")], r"image_sha256\[0\]"),
])
def test_enroll_rejects_bad_metadata(tmp_path, names, paths, shas, message: str) -> None:
    store = new_store(tmp_path, dim=8)
    emb = unit_rows(np.random.default_rng(3), 3, 8)
    with pytest.raises(StoreError, match=message):
        store.enroll(emb, names, paths, shas or [sha(s) for s in "123"], model_version=MODEL)


def test_remove_identity_leaves_nothing_recoverable(tmp_path) -> None:
    store = new_store(tmp_path, dim=64, segment_rows=16, max_segments=2)
    rng = np.random.default_rng(4)
    emb, names, paths, shas = gallery(rng, 40, 64, max_templates=3)
    for a in range(0, len(names), 9):
        store.enroll(emb[a:a + 9], names[a:a + 9], paths[a:a + 9], shas[a:a + 9], model_version=MODEL)
    victim = names[len(names) // 2]
    victim_rows = [i for i, n in enumerate(names) if n == victim]
    before = store.metadata()
    victim_ids = before.loc[before["identity"] == victim, "row_id"].to_numpy()
    assert store.remove_identity(victim) == len(victim_rows)
    # gone from search, metadata, identities and embeddings
    _, hits = store.search(emb[victim_rows], len(names), model_version=MODEL)
    assert not np.isin(victim_ids, hits).any()
    assert victim not in store.identities() and victim not in set(store.metadata()["identity"])
    with pytest.raises(StoreError, match="not in the store"):
        store.get_embeddings(victim_ids)
    # no file of the store holds the embedding bytes, and no Parquet file (live or not) holds the identity
    blobs = [p.read_bytes() for p in store_files(store.path)]
    for i in victim_rows:
        assert not any(emb[i].tobytes() in blob for blob in blobs)
    for path in store_files(store.path):
        if path.suffix == ".parquet":
            assert victim not in set(pq.read_table(path).column("identity").to_pylist())
    # every file on disk is referenced by the manifest (old versions were unlinked)
    referenced = {f.name for seg in store._current().manifest.segments for f in seg.files()}
    on_disk = {p.relative_to(store.path).as_posix() for p in store_files(store.path)} - {"manifest.json", "LOCK"}
    assert on_disk == referenced
    assert store.info()["identities"] == len(set(names)) - 1
    reopened = GalleryStore.open(store.path)
    assert len(reopened) == len(names) - len(victim_rows)
    reopened.verify_integrity()


def test_remove_unknown_identity_is_zero_and_row_ids_are_not_reused(tmp_path) -> None:
    store = new_store(tmp_path, dim=8)
    rng = np.random.default_rng(5)
    store.enroll(unit_rows(rng, 2, 8), ["a", "b"], ["1", "2"], [sha("1"), sha("2")], model_version=MODEL)
    generation = store.info()["generation"]
    assert store.remove_identity("nobody") == 0 and store.info()["generation"] == generation
    assert store.remove_identity("b") == 1
    res = store.enroll(unit_rows(rng, 1, 8), ["c"], ["3"], [sha("3")], model_version=MODEL)
    assert res.added["row_id"].tolist() == [2]
    # the image of a deleted identity can be enrolled again (it is no longer a duplicate)
    res = store.enroll(unit_rows(rng, 1, 8), ["b"], ["2"], [sha("2")], model_version=MODEL)
    assert res.added["row_id"].tolist() == [3] and res.duplicates.empty
    assert store.metadata()["row_id"].tolist() == [0, 2, 3]


def test_get_embeddings_validates(tmp_path) -> None:
    store = new_store(tmp_path, dim=8)
    with pytest.raises(StoreError, match="1-D array of integers"):
        store.get_embeddings(np.array([0.5]))
    assert store.get_embeddings(np.array([], np.int64)).shape == (0, 8)
    assert isinstance(store.metadata(), pd.DataFrame) and store.metadata().empty
