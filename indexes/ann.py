"""Optional approximate (ANN) indexes: one derived faiss index per sealed segment.

Design: segments stay the source of truth. For kind "hnsw" / "ivf", `compact()` (and automatic
compaction, for the segments it produces) builds a faiss index over each segment with at least
`ann_min_rows` rows and stores it as `ann/<id>.faiss`; its ids are the segment's Parquet `row_id`s.
Smaller (recent) segments are searched exactly and the results merged. Because HNSW/IVF-Flat store
a copy of the vectors, a delete that rewrites a segment drops that segment's ANN file with the old
segment (nothing deleted stays recoverable); the new segment is searched exactly until the next
`compact()` rebuilds its index. Recall@k against exact search is measured on the segment's own
vectors when an index is built, and over the whole store by `GalleryStore.ann_recall()`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import uuid
from pathlib import Path

import faiss
import numpy as np

from indexes.atomic import write_new_file
from indexes.config import IndexConfig
from indexes.errors import StoreCorrupt
from indexes.manifest import ANN_DIR, AnnEntry, FileEntry
from indexes.search import topk_inner_product
from indexes.segments import check_digest

logger = logging.getLogger(__name__)


def ivf_nlist(config: IndexConfig, rows: int) -> int:
    """IVF cells for a segment: config.ivf_nlist, else 4 sqrt(rows), with >= 39 training rows per cell."""
    wanted = config.ivf_nlist if config.ivf_nlist is not None else int(4 * math.sqrt(rows))
    return max(1, min(wanted, rows // 39))


def factory_string(config: IndexConfig, rows: int) -> str:
    """The faiss index_factory description used for a segment of `rows` rows."""
    if config.kind == "hnsw":
        return f"IDMap,HNSW{config.hnsw_m},Flat"
    if config.kind == "ivf":
        return f"IVF{ivf_nlist(config, rows)},Flat"
    raise ValueError(f"no ANN index for kind {config.kind!r}")


def build_index(vectors: np.ndarray, row_ids: np.ndarray, config: IndexConfig) -> faiss.Index:
    """Build an inner-product ANN index. vectors [n, D] float32, row_ids [n] int64 (the faiss ids)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.index_factory(vectors.shape[1], factory_string(config, vectors.shape[0]), faiss.METRIC_INNER_PRODUCT)
    if config.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = config.ef_construction
    else:
        index.train(vectors)
    index.add_with_ids(vectors, np.ascontiguousarray(row_ids, dtype=np.int64))
    return index


def search_index(index: faiss.Index, queries: np.ndarray, k: int, config: IndexConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """ANN search. queries [Q, D] float32 -> (scores [Q, k] float32 desc, row ids [Q, k] int64, -1 padded)."""
    if config.kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=max(config.ef_search, k))
    else:
        params = faiss.SearchParametersIVF(nprobe=config.nprobe)
    scores, ids = index.search(queries, k, params=params)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    return scores, ids


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids ([Q, k] int64, -1 = none) found in the approximate top-k."""
    hits = total = 0
    for approx, exact in zip(approx_ids, exact_ids):
        wanted = exact[exact >= 0]
        hits += np.intersect1d(approx[approx >= 0], wanted).size
        total += wanted.size
    return 1.0 if total == 0 else hits / total


def sample_queries(vectors: np.ndarray, n_queries: int, seed: int) -> np.ndarray:
    """Rows of the store's own vectors used as recall queries -> [min(n, rows), D] float32."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(vectors.shape[0], size=min(n_queries, vectors.shape[0]), replace=False))
    return np.ascontiguousarray(vectors[pick])


def build_ann_file(store_dir: Path, vectors: np.ndarray, row_ids: np.ndarray, config: IndexConfig) -> AnnEntry:
    """Build, measure (recall@k vs exact on the segment's own vectors) and write `ann/<id>.faiss`."""
    index = build_index(vectors, row_ids, config)
    queries = sample_queries(vectors, config.recall_queries, seed=int(row_ids[0]))
    _, exact_pos = topk_inner_product(queries, vectors, config.recall_k)
    exact_ids = np.where(exact_pos >= 0, row_ids[np.maximum(exact_pos, 0)], -1)
    _, approx_ids = search_index(index, queries, config.recall_k, config)
    recall = recall_at_k(approx_ids, exact_ids)
    data = faiss.serialize_index(index)
    name = f"{ANN_DIR}/{uuid.uuid4().hex}.faiss"
    written = write_new_file(store_dir / name, [memoryview(data)])
    logger.info("built %s over %d rows: recall@%d=%.4f", factory_string(config, len(row_ids)), len(row_ids),
                config.recall_k, recall)
    return AnnEntry(file=FileEntry(name=name, size=written.size, sha256=written.sha256), kind=config.kind,
                    description=factory_string(config, len(row_ids)), recall=recall, recall_k=config.recall_k)


def load_ann_file(path: Path, rows: int, sha256: str) -> faiss.Index:
    """Read an ANN file: check the sha256 of its bytes, deserialise those bytes, check it indexes `rows` vectors.

    Raises FileNotFoundError if absent, StoreCorrupt if damaged or edited since it was written. The file
    is mapped once, hashed, then parsed from the mapping: the parsed bytes are the hashed ones (unlike a
    second `read_index(path)`), and `faiss.deserialize_index` of an in-memory copy was 2x slower here.
    """
    with open(path, "rb") as handle:
        try:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise StoreCorrupt(f"{path} is empty; restore the store directory from a backup") from None
    with mapping, memoryview(mapping) as view:
        check_digest(path, hashlib.sha256(view).hexdigest(), sha256)
        offset = 0

        def read(size: int) -> bytes:
            nonlocal offset
            chunk = bytes(view[offset: offset + size])
            offset += len(chunk)
            return chunk

        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read))
        except RuntimeError as exc:
            raise StoreCorrupt(f"{path}: unreadable faiss index ({exc}); run compact() to rebuild it") from exc
    if index.ntotal != rows:
        raise StoreCorrupt(f"{path}: indexes {index.ntotal} vectors but its segment has {rows}; "
                           "run compact() to rebuild it")
    return index
