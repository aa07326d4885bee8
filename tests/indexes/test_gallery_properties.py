"""Property test (hypothesis): any sequence of enrol / remove / search / identify / verify / compact / reopen on
a gallery store agrees with a plain in-memory model of it (a dict row_id -> (identity, sha256, vector))
and brute-force numpy scores.

The store is tiny-segmented (segment_rows=4, max_segments=2) so automatic and explicit compactions merge
and split segments all the time; a second handle only reads, so every step also checks that a reader
follows another handle's commits. Tied scores (the same vector enrolled twice) may come back in
either order: results are compared as score sequences, and each returned id must carry its own score.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gallery_testlib import MODEL
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from indexes import GalleryStore, IndexConfig, StoreError
from indexes.writer import is_small

DIM = 6
CONFIG = IndexConfig(segment_rows=4, max_segments=1)
NAMES = st.sampled_from(["ana", "bo", "cy", "dee", "ed"])
TOL = 1e-5
pytestmark = pytest.mark.slow  # 10-15 s on the 2-core box


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def assert_ranking(got_names: list, got_scores: np.ndarray, reference: dict, n: int) -> None:
    """`got` is a best-first ranking of n distinct keys of `reference` (key -> true score), ties in any order."""
    assert len(got_names) == n and len(set(got_names)) == n
    np.testing.assert_allclose(got_scores, [reference[k] for k in got_names], atol=TOL)
    np.testing.assert_allclose(got_scores, sorted(reference.values(), reverse=True)[:n], atol=TOL)


class GalleryModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gallery-prop-"))
        self.store = GalleryStore.create(self.dir / "g", model_version=MODEL, embedding_dim=DIM, index=CONFIG)
        self.reader = GalleryStore.open(self.dir / "g")
        self.rows: dict[int, tuple[str, str, np.ndarray]] = {}  # row_id -> (identity, sha256, vector)
        self.next_row_id = 0
        self.shas: list[str] = []  # every digest ever offered (live, deleted or never stored)

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def scores(self, query: np.ndarray) -> dict[int, float]:
        return {rid: float(query.astype(np.float64) @ v.astype(np.float64)) for rid, (_, _, v) in self.rows.items()}

    def identity_scores(self, query: np.ndarray, aggregation: str) -> dict[str, float]:
        by_name: dict[str, list[float]] = {}
        for rid, s in self.scores(query).items():
            by_name.setdefault(self.rows[rid][0], []).append(s)
        return {n: (max(v) if aggregation == "max" else float(np.mean(v))) for n, v in by_name.items()}

    def queries(self, data: st.DataObject) -> np.ndarray:
        out = []
        for _ in range(data.draw(st.integers(1, 3), label="queries")):
            if self.rows and data.draw(st.booleans(), label="stored vector as query"):
                out.append(self.rows[data.draw(st.sampled_from(sorted(self.rows)))][2])
            else:
                out.append(vector(data.draw(st.integers(0, 2**32 - 1))))
        return np.stack(out)

    @initialize(data=st.data(), n=st.integers(0, 16))
    def prefill(self, data: st.DataObject, n: int) -> None:
        if n:
            self.enroll(data, n)

    @rule(data=st.data(), n=st.integers(1, 6))
    def enroll(self, data: st.DataObject, n: int) -> None:
        names, shas, vectors = [], [], []
        for _ in range(n):
            names.append(data.draw(NAMES))
            kind = data.draw(st.sampled_from(["fresh", "offered before", "repeated in this call"]))
            if kind == "offered before" and self.shas:
                shas.append(data.draw(st.sampled_from(self.shas)))
            elif kind == "repeated in this call" and shas:
                shas.append(data.draw(st.sampled_from(shas)))
            else:
                shas.append(hashlib.sha256(f"image-{len(self.shas)}".encode()).hexdigest())
                self.shas.append(shas[-1])
            if self.rows and data.draw(st.booleans(), label="copy a stored vector (tied scores)"):
                vectors.append(self.rows[data.draw(st.sampled_from(sorted(self.rows)))][2])
            else:
                vectors.append(vector(data.draw(st.integers(0, 2**32 - 1))))
        result = self.store.enroll(np.stack(vectors), names, [f"{s[:6]}.jpg" for s in shas], shas,
                                   model_version=MODEL)
        live = {sha: (rid, name) for rid, (name, sha, _) in self.rows.items()}
        added, duplicates = [], []
        for name, sha, v in zip(names, shas, vectors):
            if sha in live:
                duplicates.append((sha, *live[sha]))
            else:
                live[sha] = (self.next_row_id, name)
                self.rows[self.next_row_id] = (name, sha, v)
                added.append((self.next_row_id, name, sha))
                self.next_row_id += 1
        assert list(result.added[["row_id", "identity", "image_sha256"]].itertuples(index=False, name=None)) == added
        got = result.duplicates[["image_sha256", "existing_row_id", "existing_identity"]]
        assert list(got.itertuples(index=False, name=None)) == duplicates

    @rule(name=NAMES)
    def remove(self, name: str) -> None:
        doomed = [rid for rid, row in self.rows.items() if row[0] == name]
        assert self.store.remove_identity(name) == len(doomed)
        for rid in doomed:
            del self.rows[rid]

    @rule(data=st.data(), k=st.integers(1, 8), reader=st.booleans())
    def search(self, data: st.DataObject, k: int, reader: bool) -> None:
        queries = self.queries(data)
        scores, ids = (self.reader if reader else self.store).search(queries, k, model_version=MODEL)
        n = min(k, len(self.rows))
        assert scores.shape == ids.shape == (len(queries), k)
        for query, row_scores, row_ids in zip(queries, scores, ids):
            assert (row_ids[n:] == -1).all() and np.isneginf(row_scores[n:]).all()
            assert_ranking(row_ids[:n].tolist(), row_scores[:n], self.scores(query), n)

    @rule(data=st.data(), top_k=st.integers(1, 6), threshold=st.floats(-1, 1), aggregation=st.sampled_from(["max", "mean"]))
    def identify(self, data: st.DataObject, top_k: int, threshold: float, aggregation: str) -> None:
        queries = self.queries(data)
        if not self.rows:
            with pytest.raises(StoreError, match="is empty"):
                self.store.identify(queries, model_version=MODEL, threshold=threshold)
            return
        got = self.store.identify(queries, model_version=MODEL, top_k=top_k, threshold=threshold,
                                  aggregation=aggregation)
        for q, query in enumerate(queries):
            reference = self.identity_scores(query, aggregation)
            mine = got[got["query_index"] == q]
            n = min(top_k, len(reference))
            assert mine["rank"].tolist() == list(range(1, n + 1))
            assert_ranking(mine["identity"].tolist(), mine["score"].to_numpy(), reference, n)
            best = max(reference.values())
            decision = mine["decision"].iloc[0]
            assert (mine["decision"] == decision).all()
            if abs(best - threshold) > TOL:  # a best score equal to the threshold may round either way
                assert decision == (mine["identity"].iloc[0] if best > threshold else "unknown")

    @rule(data=st.data(), threshold=st.floats(-1, 1))
    def verify(self, data: st.DataObject, threshold: float) -> None:
        queries = self.queries(data)
        claimed = [data.draw(NAMES) for _ in queries]
        got = self.store.verify(queries, claimed, model_version=MODEL, threshold=threshold)
        for query, name, (_, row) in zip(queries, claimed, got.iterrows()):
            reference = self.identity_scores(query, "max")
            assert row["known"] == (name in reference)
            if name in reference:
                assert abs(row["score"] - reference[name]) <= TOL
                if abs(reference[name] - threshold) > TOL:
                    assert row["match"] == (reference[name] > threshold)
            else:
                assert np.isnan(row["score"]) and not row["match"]

    @rule()
    def compact(self) -> None:
        self.store.compact()
        assert sum(r < CONFIG.segment_rows for r in self.store.info()["segment_rows"]) <= 1

    @rule(which=st.sampled_from(["writer", "reader"]))
    def reopen(self, which: str) -> None:
        if which == "writer":
            self.store = GalleryStore.open(self.dir / "g", model_version=MODEL)
        else:
            self.reader = GalleryStore.open(self.dir / "g")

    @rule()
    def integrity(self) -> None:
        self.store.verify_integrity()

    @invariant()
    def agrees_with_the_model(self) -> None:
        for store in (self.store, self.reader):
            meta = store.metadata()
            assert len(store) == len(meta) == len(self.rows)
            assert store.identities() == sorted({name for name, _, _ in self.rows.values()})
            want = [(rid, name, sha) for rid, (name, sha, _) in sorted(self.rows.items())]
            assert list(meta[["row_id", "identity", "image_sha256"]].itertuples(index=False, name=None)) == want
            if self.rows:
                np.testing.assert_array_equal(store.get_embeddings(meta["row_id"].to_numpy()),
                                              np.stack([self.rows[r][2] for r in meta["row_id"]]))
            info = store.info()
            assert info["rows"] == len(self.rows) and info["identities"] == len(store.identities())
            assert sum(is_small(r, CONFIG) for r in info["segment_rows"]) <= CONFIG.max_segments


GalleryModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None, derandomize=True,
                                          database=None, suppress_health_check=[HealthCheck.too_slow])
TestGalleryStoreAgreesWithAModel = GalleryModel.TestCase
