"""A consistent read view of a store: one manifest generation and its loaded segments.

Readers take no lock. A snapshot is built from one manifest read; its files are immutable, so it
stays valid while writers commit newer generations. If a listed file vanished while loading (a
writer committed and removed it in between), loading retries with the new manifest; a file missing
under an unchanged manifest is corruption.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexes.ann import load_ann_file, search_index
from indexes.arena import Arena
from indexes.errors import StoreCorrupt, StoreError
from indexes.manifest import MANIFEST_NAME, Manifest, SegmentEntry, read_manifest
from indexes.search import merge_topk, topk_inner_product
from indexes.segments import (
    METADATA_SCHEMA,
    Segment,
    check_file_size,
    is_mapped,
    load_segment,
    map_vectors,
    read_vectors_into,
)

logger = logging.getLogger(__name__)

StatKey = tuple[int, int, int, int, int]
_GENERATION = re.compile(rb'"generation": (\d+)')
_LOAD_ATTEMPTS = 20


def manifest_stat_key(store_dir: Path) -> StatKey:
    """Identity of the current manifest: a commit replaces the file (new inode and times) and bumps
    `generation`, which sits in its first bytes; both are read (~20 us) so that an inode reused within
    one timestamp tick cannot hide a commit."""
    path = store_dir / MANIFEST_NAME
    st = os.stat(path)
    with open(path, "rb") as handle:
        found = _GENERATION.search(handle.read(256))
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, int(found.group(1)) if found else -1


def verify_segments(segments: Sequence[Segment]) -> None:
    """`Segment.verify_vectors` of those not verified yet, a few at a time (hashlib releases the GIL).

    Every path that serves or copies a segment's vector bytes calls this first, so an edited .npy
    raises StoreCorrupt instead of being searched or laundered into a new file with a fresh sha256.
    """
    todo = [seg for seg in segments if not seg.vectors_verified]
    if len(todo) <= 1:
        for seg in todo:
            seg.verify_vectors()
        return
    with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1, 4)) as pool:
        for future in [pool.submit(seg.verify_vectors) for seg in todo]:
            future.result()


class Snapshot:
    """Manifest + loaded segments (+ their ANN indexes).

    Rows are addressed by *handles* (int64): segment s holds handles starts[s] .. starts[s] + rows - 1.
    Segments start memory-mapped (opening reads metadata only, so enrol/remove/info never read the
    vectors) and handles are cumulative offsets. For "flat" stores the first search calls
    `materialize()`, which copies every segment into the arena (`indexes.arena`); from then on
    handles are arena rows, `base` is the arena and `holes` its unused ranges. Used under the owning
    store's lock only (materialize mutates the snapshot and the arena).
    Vector bytes are checked against the manifest's sha256 the first time they are read: while
    copied into the arena, else (memory-mapped) when a search or lookup first touches the segment.
    """

    def __init__(self, path: Path, manifest: Manifest, segments: Sequence[Segment],
                 anns: Sequence[faiss.Index | None], stat_key: StatKey, arena: Arena | None) -> None:
        self.path = path
        self.manifest = manifest
        self.segments = tuple(segments)
        self.anns = tuple(anns)
        self.stat_key = stat_key
        self.arena = arena  # None for approximate kinds: search each segment (or its ANN index)
        self.starts = np.concatenate([[0], np.cumsum([seg.rows for seg in self.segments])])[:-1].astype(np.int64)
        self.base: np.ndarray | None = None
        self.holes: tuple[tuple[int, int], ...] = ()
        self._order: np.ndarray | None = None  # argsort of starts, cached for _split
        self._sorted_starts = self.starts

    @property
    def rows(self) -> int:
        return self.manifest.rows

    @property
    def materialized(self) -> bool:
        return self.base is not None

    def materialize(self) -> None:
        """Place every segment's vectors in the arena (copying only the segments not there yet)."""
        if self.arena is None or self.base is not None:
            return
        by_id = {seg.entry.id: seg for seg in self.segments}
        def fill(entry: SegmentEntry, out: np.ndarray) -> None:  # hashes the bytes as it reads them
            seg = by_id[entry.id]
            read_vectors_into(self.path, entry, seg.vectors, out, verify=not seg.vectors_verified)
            seg.mark_vectors_verified()

        self.arena.place([seg.entry for seg in self.segments], fill)
        # the arena views replace the memory maps, which are unmapped once unreferenced
        self.segments = tuple(seg.with_vectors(self.arena.view(seg.entry.id)) for seg in self.segments)
        self.starts = np.array([self.arena.start(seg.entry.id) for seg in self.segments], np.int64)
        self._order = None
        self.base = self.arena.buf[: self.arena.used]
        self.holes = tuple(self.arena.holes())

    def _split(self, handles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._order is None or self._order.size != self.starts.size:
            self._order = np.argsort(self.starts, kind="stable")
            self._sorted_starts = self.starts[self._order]
        seg = self._order[np.searchsorted(self._sorted_starts, handles, side="right") - 1]
        return seg, handles - self.starts[seg]

    def _by_segment(self, seg: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(segment index, mask) for each segment present in `seg` (a few hits: no np.unique sort)."""
        if seg.size and (seg == seg.flat[0]).all():
            return [(int(seg.flat[0]), np.ones(seg.shape, bool))]
        return [(int(s), seg == s) for s in np.unique(seg)]

    def handles_of_ordinals(self, ordinals: np.ndarray) -> np.ndarray:
        """Handles of the rows numbered 0..rows-1 in segment order -> int64."""
        self.materialize()
        offsets = np.concatenate([[0], np.cumsum([seg.rows for seg in self.segments])])
        seg = np.searchsorted(offsets, ordinals, side="right") - 1
        return self.starts[seg] + (ordinals - offsets[seg])

    def search_positions(self, queries: np.ndarray, k: int, *, exact: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows. queries [Q, D] float32 -> (scores [Q, k] float32 desc, handles [Q, k] int64).

        Uses each segment's ANN index when present unless `exact`; pads with (-inf, -1).
        """
        self.materialize()
        if self.base is not None:  # one exact scan over the arena, holes masked
            scores, handles = topk_inner_product(queries, self.base, min(k, self.rows), self.holes)
            return merge_topk([scores], [handles], k)  # pads to k
        config = self.manifest.index
        verify_segments([seg for seg, ann in zip(self.segments, self.anns) if ann is None or exact])
        parts_s, parts_p = [], []
        for seg, ann, start in zip(self.segments, self.anns, self.starts):
            if ann is not None and not exact:
                scores, ids = search_index(ann, queries, min(k, seg.rows), config)
                local = np.searchsorted(seg.row_ids, np.maximum(ids, 0))
                pos = np.where(ids >= 0, local + start, -1)
            else:
                scores, local = topk_inner_product(queries, seg.vectors, min(k, seg.rows))
                pos = np.where(local >= 0, local + start, -1)
            parts_s.append(scores)
            parts_p.append(pos)
        if not parts_s:
            q = queries.shape[0]
            return np.full((q, k), -np.inf, np.float32), np.full((q, k), -1, np.int64)
        return merge_topk(parts_s, parts_p, k)

    def row_ids_at(self, handles: np.ndarray) -> np.ndarray:
        """Row ids at handles (any shape, -1 kept as -1) -> int64, same shape."""
        out = np.full(handles.shape, -1, np.int64)
        valid = handles >= 0
        seg, local = self._split(handles[valid])
        ids = np.empty(seg.shape, np.int64)
        for s, mask in self._by_segment(seg):
            ids[mask] = self.segments[s].row_ids[local[mask]]
        out[valid] = ids
        return out

    def column_at(self, name: str, handles: np.ndarray) -> np.ndarray:
        """Metadata column values at handles [n] (all >= 0) -> numpy array [n]."""
        seg, local = self._split(handles)
        out = np.empty(handles.shape[0], dtype=object)
        for s, mask in self._by_segment(seg):
            out[mask] = self.segments[s].column_at(name, local[mask])
        return out

    def vectors_at(self, handles: np.ndarray) -> np.ndarray:
        """Vectors at handles [n] (all >= 0) -> [n, D] float32 copy."""
        seg, local = self._split(handles)
        out = np.empty((handles.shape[0], self.manifest.embedding_dim), np.float32)
        parts = self._by_segment(seg)
        verify_segments([self.segments[s] for s, _ in parts])
        for s, mask in parts:
            out[mask] = self.segments[s].vectors[local[mask]]
        return out

    def names_at(self, handles: np.ndarray) -> np.ndarray:
        """Identity names at handles [n] (all >= 0) -> object [n]."""
        return self.column_at("identity", handles)

    def gather(self, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All templates of the given identities -> (vectors [T, D] float32 grouped by name, bounds [U + 1])."""
        arrow_names = pa.array(list(names), type=pa.string())
        owners, sources, positions = [], [], []
        for s, seg in enumerate(self.segments):
            owner, pos = seg.positions_of(arrow_names)
            owners.append(owner)
            sources.append(np.full(owner.shape, s, np.int64))
            positions.append(pos)
        dim = self.manifest.embedding_dim
        if not owners:
            return np.zeros((0, dim), np.float32), np.zeros(len(names) + 1, np.int64)
        owner = np.concatenate(owners)
        source = np.concatenate(sources)
        position = np.concatenate(positions)
        order = np.argsort(owner, kind="stable")
        owner, source, position = owner[order], source[order], position[order]
        vectors = np.empty((owner.size, dim), np.float32)
        verify_segments([self.segments[s] for s in np.unique(source)])
        for s in np.unique(source):
            mask = source == s
            vectors[mask] = self.segments[s].vectors[position[mask]]
        bounds = np.searchsorted(owner, np.arange(len(names) + 1)).astype(np.int64)
        return vectors, bounds

    def embeddings(self, row_ids: np.ndarray) -> np.ndarray:
        """Vectors of the given row ids [n] int64 -> [n, D] float32; StoreError names unknown ids."""
        out = np.empty((row_ids.shape[0], self.manifest.embedding_dim), np.float32)
        found = np.zeros(row_ids.shape[0], bool)
        for seg in self.segments:
            idx = np.minimum(np.searchsorted(seg.row_ids, row_ids), seg.rows - 1)
            hit = seg.row_ids[idx] == row_ids
            if hit.any():
                out[hit] = seg.verify_vectors()[idx[hit]]
                found |= hit
        if not found.all():
            missing = row_ids[~found]
            raise StoreError(f"row ids {missing[:10].tolist()} ({missing.size} in total) are not in the store "
                             f"{self.path} (deleted, or never enrolled)")
        return out

    def metadata_table(self) -> pa.Table:
        """Live metadata rows of all segments, ordered by row_id."""
        if not self.segments:
            return METADATA_SCHEMA.empty_table()
        table = pa.concat_tables([seg.table for seg in self.segments])
        return table.sort_by("row_id") if len(self.segments) > 1 else table

    def identities(self) -> list[str]:
        """Sorted distinct identity names."""
        if not self.segments:
            return []
        distinct = pc.unique(pa.chunked_array([seg.distinct_identities() for seg in self.segments]))
        return sorted(distinct.to_pylist())

    def has_identities(self, names: pa.Array) -> np.ndarray:
        """Whether each name is enrolled -> bool [len(names)]."""
        out = np.zeros(len(names), bool)
        for seg in self.segments:
            out |= seg.identity_codes(names) >= 0
        return out


def _check_unique_row_ids(segments: list[Segment], store_dir: Path) -> None:
    ranges = sorted((seg.entry.min_row_id, seg.entry.max_row_id) for seg in segments)
    if all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])):
        return  # disjoint ranges cannot share an id
    ids = np.concatenate([seg.row_ids for seg in segments])
    if np.unique(ids).size != ids.size:
        raise StoreCorrupt(f"{store_dir}: a row_id appears in two segments; restore the store from a backup")


def _reusable(old: Segment | None, entry: SegmentEntry) -> bool:
    return old is not None and (old.entry.vectors, old.entry.metadata) == (entry.vectors, entry.metadata)


def _load_segments(store_dir: Path, entries: list[SegmentEntry], dim: int) -> dict[str, Segment]:
    """Load several segments (metadata + memory-mapped vectors) in parallel (Parquet decoding releases the GIL)."""
    if len(entries) <= 1:
        return {e.id: load_segment(store_dir, e, dim, mapped=True) for e in entries}
    with ThreadPoolExecutor(max_workers=min(len(entries), os.cpu_count() or 1, 4)) as pool:
        futures = {e.id: pool.submit(load_segment, store_dir, e, dim, mapped=True) for e in entries}
        return {sid: future.result() for sid, future in futures.items()}


def load_snapshot(store_dir: Path, previous: Snapshot | None = None, arena: Arena | None = None) -> Snapshot:
    """Load the current manifest generation, reusing unchanged segments of `previous`.

    New segments are memory-mapped. With an `arena` and a "flat" store the snapshot can be
    materialized into it; if `previous` was, the new one is too (copying only the new segments).
    """
    reuse_seg = {seg.entry.id: seg for seg in previous.segments} if previous else {}
    reuse_ann = {}
    if previous is not None:
        for seg, ann in zip(previous.segments, previous.anns):
            if ann is not None and seg.entry.ann is not None:
                reuse_ann[seg.entry.ann.file.name] = ann
    for _ in range(_LOAD_ATTEMPTS):
        try:
            key = manifest_stat_key(store_dir)
        except FileNotFoundError:
            read_manifest(store_dir)  # raises the "not a gallery store" StoreError
            continue  # the manifest appeared in between
        manifest = read_manifest(store_dir)
        dim = manifest.embedding_dim
        use_arena = arena is not None and not manifest.index.approximate
        try:
            segments, anns = [], []
            fresh = [e for e in manifest.segments if not _reusable(reuse_seg.get(e.id), e)]
            loaded = _load_segments(store_dir, fresh, dim)
            for entry in manifest.segments:
                segment = loaded.get(entry.id)
                if segment is None:
                    segment = reuse_seg[entry.id].with_entry(entry)
                    if not use_arena and not is_mapped(segment.vectors):
                        segment = segment.with_vectors(map_vectors(store_dir, entry, dim))
                segments.append(segment)
                ann = None
                if entry.ann is not None:
                    ann = reuse_ann.get(entry.ann.file.name)
                    if ann is None:
                        ann_path = store_dir / entry.ann.file.name
                        check_file_size(ann_path, entry.ann.file.size)
                        ann = load_ann_file(ann_path, entry.rows, entry.ann.file.sha256)
                anns.append(ann)
        except FileNotFoundError as exc:
            if manifest_stat_key(store_dir) != key:
                logger.debug("manifest changed while loading %s; retrying", store_dir)
                continue
            raise StoreCorrupt(f"{exc.filename or exc} is listed in {store_dir / MANIFEST_NAME} but missing; "
                               "restore the store directory from a backup") from exc
        if previous is None:  # a full open checks row-id uniqueness; commits only add fresh ids
            _check_unique_row_ids(segments, store_dir)
        if arena is not None and not use_arena:
            arena.clear()
        snap = Snapshot(store_dir, manifest, segments, anns, key, arena if use_arena else None)
        if previous is not None and previous.materialized:
            snap.materialize()
        return snap
    raise StoreError(f"{store_dir}: the manifest changed {_LOAD_ATTEMPTS} times while opening (writers commit "
                     "continuously); retry")
