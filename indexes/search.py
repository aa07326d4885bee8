"""Exact top-k inner-product search: plain functions over numpy arrays.

For L2-normalised float32 vectors the inner product is the cosine similarity. All paths are exact:
- 1 query: one BLAS gemv over the base (memory-bandwidth bound), then a top-k that first takes the
  k-th largest score of a strided sample as a lower bound of the true k-th largest, keeps only the
  scores above it, and argpartitions those few (instead of argpartitioning all N scores);
- batches: sgemm over blocks of base rows into one reused 64 MiB buffer, so the Q x N score matrix
  is never materialised; after the first block (argpartition), each block only keeps the scores
  above each query's running k-th best (a vectorised compare + 1-D flatnonzero) and merges them.
- k close to N: the full score matrix, in query chunks, and argpartition.
Why not `faiss.knn` (blocked sgemm + heaps): on this 2-core machine it was ~15% faster for 1,000
queries x 1M when idle, but its OpenMP threads degrade badly when other processes load the CPU
(2.7x slower than this path at load average ~6, and slower than plain numpy for 20..256 queries),
while this path uses the same BLAS threading as numpy and degrades like it.
Results are padded with score -inf and index -1 when k exceeds the number of base rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ranges = Sequence[tuple[int, int]]  # row ranges [a, b) of the base to leave out (arena holes)

_BLOCK_ELEMENTS = 1 << 24  # scores per sgemm block (64 MiB of float32)
_SAMPLE_SIZE = 2048


def _pad(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, idx
    q = scores.shape[0]
    return (np.concatenate([scores, np.full((q, missing), -np.inf, np.float32)], axis=1),
            np.concatenate([idx, np.full((q, missing), -1, np.int64)], axis=1))


def _sort_desc(scores: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


def topk_1d(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one score vector [n] float32 (k <= n) -> (scores [k] desc, positions [k] int64)."""
    n = scores.shape[0]
    candidates = None
    sub = scores
    if n > 32 * max(k, _SAMPLE_SIZE // 8):
        sample = scores[:: max(1, n // _SAMPLE_SIZE)]
        if sample.size > 4 * k:
            # k-th largest of a subset <= k-th largest of the whole, so nothing of the top-k is dropped
            bound = np.partition(sample, sample.size - k)[sample.size - k]
            candidates = np.flatnonzero(scores >= bound)
            sub = scores[candidates]
    part = np.argpartition(sub, sub.size - k)[sub.size - k:]
    part = part[np.argsort(-sub[part], kind="stable")]
    positions = part if candidates is None else candidates[part]
    return sub[part], positions.astype(np.int64)


def _mask(scores: np.ndarray, exclude: Ranges, offset: int = 0) -> None:
    """Set the columns of excluded rows (shifted by the block's first row `offset`) to -inf, in place."""
    width = scores.shape[-1]
    for a, b in exclude:
        lo, hi = max(a - offset, 0), min(b - offset, width)
        if lo < hi:
            scores[..., lo:hi] = -np.inf


def _topk_dense(queries: np.ndarray, base: np.ndarray, k: int, exclude: Ranges) -> tuple[np.ndarray, np.ndarray]:
    n = base.shape[0]
    chunk = max(1, _BLOCK_ELEMENTS // n)
    out_s, out_i = [], []
    for a in range(0, queries.shape[0], chunk):
        s = queries[a: a + chunk] @ base.T
        _mask(s, exclude)
        part = np.argpartition(s, n - k, axis=1)[:, n - k:]
        out_s.append(np.take_along_axis(s, part, 1))
        out_i.append(part.astype(np.int64))
    return _sort_desc(np.concatenate(out_s), np.concatenate(out_i))


def _segmented_topk(qi: np.ndarray, scores: np.ndarray, cols: np.ndarray, q: int, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Best k (score, col) per query from candidate triples; every query must have >= k candidates."""
    order = np.lexsort((-scores, qi))  # by query, then score descending
    counts = np.bincount(qi, minlength=q)
    take = order[(np.cumsum(counts) - counts)[:, None] + np.arange(k)]
    return scores[take], cols[take]


def _block_topk(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of a score block [q, w] -> (scores [q, k], cols [q, k] int64), unordered within a row.

    Like `topk_1d`, a row's k-th largest score over a strided sample of columns bounds its true k-th
    largest from below, so only the (few) scores above it need sorting.
    """
    q, w = s.shape
    if w <= 32 * max(k, 64):
        part = np.argpartition(s, w - k, axis=1)[:, w - k:]
        return np.take_along_axis(s, part, 1), part.astype(np.int64)
    sample = s[:, :: max(1, w // _SAMPLE_SIZE)]
    bound = np.partition(sample, sample.shape[1] - k, axis=1)[:, sample.shape[1] - k]
    qi, cols = np.divmod(np.flatnonzero(s >= bound[:, None]), w)
    return _segmented_topk(qi, s[qi, cols], cols, q, k)


def _topk_blocked(queries: np.ndarray, base: np.ndarray, k: int, exclude: Ranges) -> tuple[np.ndarray, np.ndarray]:
    q, n = queries.shape[0], base.shape[0]
    block = min(n, max(8 * k, _BLOCK_ELEMENTS // q))
    buf = np.empty((q, block), np.float32)
    s = buf[:, :block]
    np.matmul(queries, base[:block].T, out=s)
    _mask(s, exclude)
    best_s, best_i = _block_topk(s, k)
    query_of_best = np.repeat(np.arange(q), k)
    for a in range(block, n, block):
        b = min(n, a + block)
        s = buf[:, : b - a]
        np.matmul(queries, base[a:b].T, out=s)
        _mask(s, exclude, a)
        hits = np.flatnonzero(s > best_s.min(axis=1)[:, None])  # 1-D nonzero is ~15x faster than 2-D
        if hits.size == 0:
            continue
        qi, cj = np.divmod(hits, b - a)
        best_s, best_i = _segmented_topk(np.concatenate([query_of_best, qi]),
                                         np.concatenate([best_s.ravel(), s[qi, cj]]),
                                         np.concatenate([best_i.ravel(), cj.astype(np.int64) + a]), q, k)
    return _sort_desc(best_s, best_i)


def topk_inner_product(queries: np.ndarray, base: np.ndarray, k: int, exclude: Ranges = ()
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product.

    queries: [Q, D] float32 C-contiguous; base: [N, D] float32 C-contiguous (may be a memory map);
    exclude: row ranges [a, b) of base that are not candidates.
    Returns (scores [Q, k] float32, descending, -inf padded; positions [Q, k] int64 into base, -1 padded).
    Excluded rows are only returned (as padding) if fewer than k rows remain.
    """
    q, n = queries.shape[0], base.shape[0]
    kk = min(k, n)
    if q == 0 or kk == 0:
        return _pad(np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64), k)
    if 8 * kk >= n:
        scores, idx = _topk_dense(queries, base, kk, exclude)
    elif q == 1:
        single = base @ queries[0]
        _mask(single, exclude)
        s, i = topk_1d(single, kk)
        scores, idx = s[None, :], i[None, :]
    else:
        scores, idx = _topk_blocked(queries, base, kk, exclude)
    scores = scores.astype(np.float32, copy=False)
    idx = np.where(np.isneginf(scores), -1, idx).astype(np.int64, copy=False)
    return _pad(scores, idx, k)


def merge_topk(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-part top-k lists: scores [Q, k_i] float32, ids [Q, k_i] int64 -> best k [Q, k] each.

    Padding entries (-inf, -1) sort last; the result is padded if fewer than k entries exist.
    """
    if len(scores) == 1:
        return _pad(scores[0][:, :k], ids[0][:, :k], k)
    all_s = np.concatenate(scores, axis=1)
    all_i = np.concatenate(ids, axis=1)
    if all_s.shape[1] > k:
        part = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        all_s, all_i = np.take_along_axis(all_s, part, 1), np.take_along_axis(all_i, part, 1)
    return _pad(*_sort_desc(all_s, all_i), k)
