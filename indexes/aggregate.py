"""Score aggregation over an identity's templates (several enrolled images per identity).

An identity's score for a query aggregates the cosine scores of all its templates:
- "max" (default): the best-matching template. Robust to one bad enrolment image.
- "mean": the average over templates, computed as q . mean(templates) (equal, by linearity).

`rank_identities` is exact without scoring every identity: it retrieves the top M rows and
aggregates the identities seen there. Any identity with no row among them has every template
score <= s_M (the M-th row score), so its max and its mean are <= s_M. The ranking is therefore
final once the top_k-th candidate's aggregated score is >= s_M (always true for "max" as soon as
top_k distinct identities were seen). Queries that are not final are retried with 4 M rows, up to
all rows. With an approximate index the retrieved rows are approximate, so the ranking is too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from indexes.errors import StoreError

AGGREGATIONS: tuple[str, ...] = ("max", "mean")
_MAX_CANDIDATES = 1 << 22  # retrieved (query, row) pairs held at once

# (queries [P, D], m) -> (scores [P, m] float32 desc, handles [P, m] int64, -1 padded)
RowSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
# handles [n] int64 (>= 0) -> identity names [n] object
NamesOf = Callable[[np.ndarray], np.ndarray]
# distinct names [U] object -> (template vectors [T, D] float32 grouped by name, bounds [U + 1] int64)
Gather = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def check_aggregation(aggregation: str) -> None:
    """Raise StoreError naming the valid choices if `aggregation` is unknown."""
    if aggregation not in AGGREGATIONS:
        raise StoreError(f"aggregation={aggregation!r} is not valid; choose one of {AGGREGATIONS}")


def _mean_scores(queries: np.ndarray, qpos: np.ndarray, names: np.ndarray, gather: Gather) -> np.ndarray:
    codes, uniques = pd.factorize(names)
    vectors, bounds = gather(np.asarray(uniques, dtype=object))
    counts = np.diff(bounds)
    if np.any(counts == 0):
        raise StoreError("an identity returned by the search has no templates (store changed during the query?)")
    centroids = np.add.reduceat(vectors.astype(np.float64), bounds[:-1], axis=0) / counts[:, None]
    centroids = centroids.astype(np.float32)
    out = np.empty(len(qpos), np.float32)
    step = max(1, (1 << 24) // max(1, queries.shape[1]))
    for a in range(0, len(qpos), step):
        sl = slice(a, a + step)
        out[sl] = np.einsum("ij,ij->i", queries[qpos[sl]], centroids[codes[sl]])
    return out


def _aggregate_chunk(queries: np.ndarray, scores: np.ndarray, handles: np.ndarray, top_k: int, aggregation: str,
                     all_seen: bool, names_of: NamesOf, gather: Gather
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p, m = scores.shape
    valid = handles >= 0
    qpos = np.repeat(np.arange(p), m)[valid.ravel()]
    names = names_of(handles[valid])
    score = scores[valid]
    # rows arrive in (query, score desc) order: the first row of each (query, identity) is its max
    codes, uniques = pd.factorize(names)
    _, first = np.unique(qpos.astype(np.int64) * max(1, len(uniques)) + codes, return_index=True)
    first.sort()
    qpos, names, score = qpos[first], names[first], score[first]
    if aggregation == "mean":
        score = _mean_scores(queries, qpos, names, gather)
        order = np.lexsort((-score, qpos))
        qpos, names, score = qpos[order], names[order], score[order]
    counts = np.bincount(qpos, minlength=p)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(qpos)) - starts[qpos] + 1
    if all_seen:
        resolved = np.ones(p, bool)
    else:
        enough = counts >= top_k
        resolved = enough.copy()
        if aggregation == "mean":
            kth = np.full(p, -np.inf, np.float32)
            kth[enough] = score[starts[enough] + top_k - 1]
            resolved &= kth >= scores[:, -1]
    keep = (rank <= top_k) & resolved[qpos]
    return resolved, qpos[keep], rank[keep], names[keep], score[keep]


def rank_identities(queries: np.ndarray, top_k: int, aggregation: str, *, n_rows: int, n_identities: int,
                    search_rows: RowSearch, names_of: NamesOf, gather: Gather
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top identities per query, ranked by aggregated template score.

    queries: [Q, D] float32. Returns parallel arrays query_index (int64), rank (int64, 1..), identity
    (object), score (float32), sorted by (query_index, rank); min(top_k, n_identities) entries per query.
    """
    check_aggregation(aggregation)
    nq = queries.shape[0]
    if nq == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.float32)
    per_identity = -(-n_rows // max(1, n_identities))
    m = min(n_rows, max(4 * top_k, 2 * top_k * per_identity))
    pending = np.arange(nq)
    parts: list[tuple[np.ndarray, ...]] = []
    while pending.size:
        step = max(1, _MAX_CANDIDATES // m)
        unresolved = []
        for a in range(0, pending.size, step):
            idx = pending[a: a + step]
            scores, handles = search_rows(queries[idx], m)
            resolved, qpos, rank, names, score = _aggregate_chunk(
                queries[idx], scores, handles, top_k, aggregation, m >= n_rows, names_of, gather)
            parts.append((idx[qpos], rank, names, score))
            unresolved.append(idx[~resolved])
        pending = np.concatenate(unresolved)
        m = min(n_rows, 4 * m)
    query_index = np.concatenate([p[0] for p in parts]).astype(np.int64)
    rank = np.concatenate([p[1] for p in parts]).astype(np.int64)
    names = np.concatenate([p[2] for p in parts])
    score = np.concatenate([p[3] for p in parts]).astype(np.float32)
    if len(parts) > 1:  # queries resolved in different rounds
        order = np.lexsort((rank, query_index))
        query_index, rank, names, score = query_index[order], rank[order], names[order], score[order]
    return query_index, rank, names, score


def claim_scores(queries: np.ndarray, claimed: np.ndarray, aggregation: str, gather: Gather) -> np.ndarray:
    """Aggregated score of each query against its claimed identity's templates.

    queries: [Q, D] float32; claimed: [Q] object (identity names). Returns [Q] float32, NaN where the
    claimed identity has no templates in the store.
    """
    check_aggregation(aggregation)
    out = np.full(queries.shape[0], np.nan, np.float32)
    if queries.shape[0] == 0:
        return out
    codes, uniques = pd.factorize(claimed)
    vectors, bounds = gather(np.asarray(uniques, dtype=object))
    order = np.argsort(codes, kind="stable")
    query_bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    for u in range(len(uniques)):
        t0, t1 = bounds[u], bounds[u + 1]
        if t1 == t0:
            continue
        qs = order[query_bounds[u]: query_bounds[u + 1]]
        sims = queries[qs] @ vectors[t0:t1].T  # [queries claiming u, templates of u]
        out[qs] = sims.max(axis=1) if aggregation == "max" else sims.mean(axis=1)
    return out
