"""Read-side methods of `GalleryStore`: search, identify, verify, recall (split out to keep files small).

All of them work on one snapshot with the store object's lock held (`_reading`), so a concurrent
commit in the same process cannot change the arena under a running search.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import numpy as np
import pandas as pd

from indexes.aggregate import check_aggregation, claim_scores, rank_identities
from indexes.ann import recall_at_k
from indexes.errors import StoreError
from indexes.snapshot import Snapshot
from indexes.validation import (
    UNKNOWN,
    check_model_version,
    check_positive_int,
    check_strings,
    check_threshold,
    check_vectors,
)


class QueryMethods:
    """Mixed into `GalleryStore`; expects `_reading()` to yield the current snapshot under the lock."""

    def _reading(self) -> AbstractContextManager[Snapshot]:  # implemented by GalleryStore
        raise NotImplementedError

    def _check_queries(self, snap: Snapshot, queries: np.ndarray, model_version: str, action: str) -> np.ndarray:
        check_model_version(snap.path, snap.manifest.model_version, model_version, action, snap.manifest.model_path)
        return check_vectors(queries, snap.manifest.embedding_dim, "queries")

    def _resolve_threshold(self, snap: Snapshot, threshold: float | None) -> float:
        if threshold is not None:
            return check_threshold(threshold)
        if snap.manifest.threshold is None:
            raise StoreError("no threshold: pass threshold=... or record the model's calibrated threshold in the store "
                             f"(GalleryStore.create(..., threshold=t) or store.set_threshold(t)) for {snap.path}")
        return snap.manifest.threshold

    def search(self, queries: np.ndarray, k: int, *, model_version: str) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by cosine. queries [Q, D] float32 L2-normalised ->
        (scores [Q, k] float32 descending, row_ids [Q, k] int64), padded with (-inf, -1) past the store's rows."""
        with self._reading() as snap:
            q = self._check_queries(snap, queries, model_version, "search it")
            scores, handles = snap.search_positions(q, check_positive_int(k, "k"))
            return scores, snap.row_ids_at(handles)

    def identify(self, queries: np.ndarray, *, model_version: str, top_k: int = 5, threshold: float | None = None,
                 aggregation: str = "max") -> pd.DataFrame:
        """1:N identification with open-set rejection, ranking identities (templates aggregated, exact for "flat").

        queries [Q, D] float32 -> one row per (query, rank): query_index (int64), rank (int64, 1..top_k),
        identity, score (float32), decision (the rank-1 identity if its score >= threshold, else "unknown",
        repeated on every rank row of the query). Fewer than top_k rows if fewer identities are enrolled.
        """
        with self._reading() as snap:
            q = self._check_queries(snap, queries, model_version, "identify against it")
            top_k = check_positive_int(top_k, "top_k")
            limit = self._resolve_threshold(snap, threshold)
            check_aggregation(aggregation)
            if snap.rows == 0:
                raise StoreError(f"the gallery store {snap.path} is empty; enrol identities first")
            query_index, rank, names, score = rank_identities(
                q, top_k, aggregation, n_rows=snap.rows, n_identities=snap.manifest.identities,
                search_rows=snap.search_positions, names_of=snap.names_at, gather=snap.gather)
        first = rank == 1  # every query has a rank-1 row (the store is not empty)
        decided = np.where(score[first] >= limit, names[first], UNKNOWN)
        return pd.DataFrame({"query_index": query_index, "rank": rank, "identity": names, "score": score,
                             "decision": decided[np.cumsum(first) - 1]})

    def verify(self, queries: np.ndarray, claimed_identities: Sequence[str], *, model_version: str,
               threshold: float | None = None, aggregation: str = "max") -> pd.DataFrame:
        """1:1 verification of each query against its claimed identity's templates.

        queries [Q, D] float32 -> per query: query_index (int64), claimed_identity, score (float32, NaN if
        the identity is not enrolled), threshold (float64), match (bool), known (bool).
        """
        with self._reading() as snap:
            q = self._check_queries(snap, queries, model_version, "verify against it")
            claimed = check_strings(claimed_identities, q.shape[0], "claimed_identities")
            limit = self._resolve_threshold(snap, threshold)
            scores = claim_scores(q, np.asarray(claimed, dtype=object), aggregation, snap.gather)
        known = ~np.isnan(scores)
        return pd.DataFrame({"query_index": np.arange(q.shape[0], dtype=np.int64), "claimed_identity": claimed,
                             "score": scores, "threshold": np.full(q.shape[0], limit),
                             "match": known & (scores >= limit),
                             "known": known})

    def _measure_recall(self, snap: Snapshot, k: int, n_queries: int, seed: int) -> float:
        if snap.rows == 0:
            return 1.0
        rng = np.random.default_rng(seed)
        ordinals = np.sort(rng.choice(snap.rows, size=min(n_queries, snap.rows), replace=False))
        queries = snap.vectors_at(snap.handles_of_ordinals(ordinals))
        _, exact = snap.search_positions(queries, k, exact=True)
        _, approx = snap.search_positions(queries, k)
        return recall_at_k(approx, exact)

    def ann_recall(self, k: int = 10, n_queries: int = 500, *, seed: int = 0) -> float:
        """Recall@k of the store's search against exact search, using `n_queries` of the store's own vectors
        as queries (1.0 for "flat", whose search is exact)."""
        with self._reading() as snap:
            return self._measure_recall(snap, check_positive_int(k, "k"), check_positive_int(n_queries, "n_queries"),
                                        seed)

