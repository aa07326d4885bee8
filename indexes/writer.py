"""Write-side building blocks: new segments, copy-on-write deletes, compaction, garbage collection.

Every function here only creates new files and returns the manifest entries describing them; the
caller (`GalleryStore`, holding the writer lock) commits them by replacing `manifest.json`, then
calls `collect_garbage` to unlink the files the new manifest no longer references.

Compaction policy (tiered):
- a segment is *small* when it has fewer than segment_rows / 2 rows (a fresh enrol, or a sealed
  segment shrunk by deletes);
- automatic: when more than `max_segments` small segments exist, merge the smallest
  (count - max_segments + 1) of them, then keep adding the next smallest while it is no larger than
  the rows merged so far. Merges therefore join segments of similar size, so each row is rewritten
  O(log rows) times, while an enrol into a big store writes only its own rows;
- explicit `compact()`: merge every segment below segment_rows, re-chunk into sealed segments and
  (for ANN kinds) build the missing ANN indexes.
Merged rows are written in row_id order, in chunks of segment_rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from indexes.ann import build_ann_file, factory_string
from indexes.atomic import fsync_dir
from indexes.config import IndexConfig
from indexes.manifest import (
    ANN_DIR,
    MANIFEST_NAME,
    SEGMENTS_DIR,
    Manifest,
    SegmentEntry,
)
from indexes.segments import METADATA_SCHEMA, Segment, sha_prefix_u64, write_segment
from indexes.snapshot import verify_segments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollResult:
    """Outcome of `GalleryStore.enroll`.

    added: one row per stored image: row_id (int64), identity, image_path, image_sha256.
    duplicates: one row per skipped image whose sha256 was already stored (or appeared earlier in the
        same call): image_path, image_sha256, existing_row_id (int64), existing_identity.
    """

    added: pd.DataFrame
    duplicates: pd.DataFrame


def rows_table(added: pd.DataFrame, model_version: str) -> pa.Table:
    """Metadata table (METADATA_SCHEMA) for new rows (`added`: row_id, identity, image_path, image_sha256)."""
    n = len(added)
    enrolled_at = datetime.now(timezone.utc)
    return pa.table({
        "row_id": pa.array(added["row_id"].to_numpy(), pa.int64()),
        "identity": pa.array(added["identity"].tolist(), pa.string()),
        "image_path": pa.array(added["image_path"].tolist(), pa.string()),
        "image_sha256": pa.array(added["image_sha256"].tolist(), pa.string()),
        "enrolled_at": pa.array([enrolled_at] * n, pa.timestamp("us", tz="UTC")),
        "model_version": pa.array([model_version] * n, pa.string()),
    }, schema=METADATA_SCHEMA)


def plan_enrollment(segments: Sequence[Segment], names: list[str], paths: list[str], shas: list[str],
                    next_row_id: int) -> tuple[list[int], pd.DataFrame, pd.DataFrame]:
    """Split an enrol batch into rows to store and duplicates (same sha256 stored, or earlier in the batch).

    Returns (input indices kept, `EnrollResult.added` with the row ids they will get, `EnrollResult.duplicates`).
    """
    n = len(shas)
    existing_row = np.full(n, -1, np.int64)
    existing_name = np.full(n, None, dtype=object)
    prefixes = sha_prefix_u64(shas)
    for seg in segments:
        pos = seg.find_sha(prefixes, shas)
        hit = (pos >= 0) & (existing_row < 0)
        if hit.any():
            existing_row[hit] = seg.row_ids[pos[hit]]
            existing_name[hit] = seg.column_at("identity", pos[hit])
    first_of: dict[str, int] = {}
    keep = [i for i, sha in enumerate(shas) if existing_row[i] < 0 and first_of.setdefault(sha, i) == i]
    row_ids = next_row_id + np.arange(len(keep), dtype=np.int64)
    id_of = dict(zip(keep, row_ids.tolist()))
    for i, sha in enumerate(shas):
        if existing_row[i] < 0 and first_of[sha] != i:  # repeated within the batch: points at the first copy
            existing_row[i], existing_name[i] = id_of[first_of[sha]], names[first_of[sha]]
    added = pd.DataFrame({"row_id": row_ids, "identity": [names[i] for i in keep],
                          "image_path": [paths[i] for i in keep], "image_sha256": [shas[i] for i in keep]})
    dup = np.flatnonzero(existing_row >= 0)
    duplicates = pd.DataFrame({"image_path": [paths[i] for i in dup], "image_sha256": [shas[i] for i in dup],
                               "existing_row_id": existing_row[dup], "existing_identity": existing_name[dup]})
    return keep, added, duplicates


def write_rows(store_dir: Path, vectors: np.ndarray, table: pa.Table, config: IndexConfig) -> list[SegmentEntry]:
    """Write new rows ([n, D] float32 + their metadata) as segments of at most segment_rows rows."""
    step = config.segment_rows
    return [write_segment(store_dir, vectors[a: a + step], table.slice(a, step))
            for a in range(0, vectors.shape[0], step)]


def rewrite_without(store_dir: Path, segment: Segment, drop: np.ndarray) -> SegmentEntry | None:
    """Copy-on-write delete: a new segment without the rows at positions `drop` (None if nothing is left).

    The source's vectors are checked against its sha256 first: StoreCorrupt (nothing written) if damaged.
    """
    keep = np.setdiff1d(np.arange(segment.rows), drop)
    if keep.size == 0:
        return None
    vectors = segment.verify_vectors()
    # the runs of kept rows are written straight from the loaded vectors (no 128 MiB copy)
    cuts = [-1, *np.unique(drop).tolist(), segment.rows]
    runs = [vectors[a + 1: b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a + 1]
    return write_segment(store_dir, runs, segment.table.take(pa.array(keep)))


def is_small(rows: int, config: IndexConfig) -> bool:
    """Small segments are the ones automatic compaction merges."""
    return rows < config.segment_rows // 2


def plan_auto_compaction(rows: Sequence[int], config: IndexConfig) -> list[int]:
    """Indices of the segments an automatic compaction merges ([] = nothing to do). See module docstring."""
    small = sorted((r, i) for i, r in enumerate(rows) if is_small(r, config))
    if len(small) <= config.max_segments:
        return []
    count = len(small) - config.max_segments + 1
    chosen = [i for _, i in small[:count]]
    merged = sum(r for r, _ in small[:count])
    for r, i in small[count:]:
        if r > merged:
            break
        chosen.append(i)
        merged += r
    return sorted(chosen)


def plan_full_compaction(rows: Sequence[int], config: IndexConfig) -> list[int]:
    """Indices of the segments `compact()` merges: all below segment_rows, if there are two or more."""
    chosen = [i for i, r in enumerate(rows) if r < config.segment_rows]
    return chosen if len(chosen) >= 2 else []


def merge_segments(store_dir: Path, segments: Sequence[Segment], config: IndexConfig, *, build_ann: bool
                   ) -> list[SegmentEntry]:
    """Write the rows of `segments` in row_id order as new segments of segment_rows rows.

    With build_ann, each output segment with >= ann_min_rows rows also gets its ANN index.
    Memory: one output chunk of vectors at a time. The sources' vectors are checked against their
    sha256 before anything is written (StoreCorrupt if one was damaged: it is never copied).
    """
    verify_segments(segments)
    row_ids = np.concatenate([seg.row_ids for seg in segments])
    source = np.concatenate([np.full(seg.rows, s, np.int64) for s, seg in enumerate(segments)])
    local = np.concatenate([np.arange(seg.rows, dtype=np.int64) for seg in segments])
    order = np.argsort(row_ids, kind="stable")
    table = pa.concat_tables([seg.table for seg in segments])
    dim = segments[0].vectors.shape[1]
    entries = []
    for a in range(0, order.size, config.segment_rows):
        take = order[a: a + config.segment_rows]
        vectors = np.empty((take.size, dim), np.float32)
        src, pos = source[take], local[take]
        for s in np.unique(src):
            mask = src == s
            vectors[mask] = segments[s].vectors[pos[mask]]
        entry = write_segment(store_dir, vectors, table.take(pa.array(take)))
        if build_ann and take.size >= config.ann_min_rows:
            entry = replace(entry, ann=build_ann_file(store_dir, vectors, row_ids[take], config))
        entries.append(entry)
    logger.info("merged %d segments (%d rows) into %d", len(segments), order.size, len(entries))
    return entries


def apply_merge(manifest: Manifest, chosen: Sequence[int], merged: Sequence[SegmentEntry]) -> tuple[SegmentEntry, ...]:
    """The manifest's segment list with the `chosen` ones replaced by `merged` (at the first one's place)."""
    out: list[SegmentEntry] = []
    chosen_set = set(chosen)
    for i, entry in enumerate(manifest.segments):
        if i == min(chosen_set):
            out.extend(merged)
        if i not in chosen_set:
            out.append(entry)
    return tuple(out)


def build_missing_ann(store_dir: Path, segments: Sequence[Segment], config: IndexConfig) -> tuple[SegmentEntry, ...]:
    """Entries with ANN indexes matching `config`: built where missing or stale, dropped for "flat".

    The vectors of the segments to index are checked against their sha256 before any index is written.
    """
    wanted = [config.approximate and seg.rows >= config.ann_min_rows for seg in segments]
    build = [want and (seg.entry.ann is None or seg.entry.ann.description != factory_string(config, seg.rows))
             for seg, want in zip(segments, wanted)]
    verify_segments([seg for seg, todo in zip(segments, build) if todo])
    out = []
    for seg, want, todo in zip(segments, wanted, build):
        entry = seg.entry
        if not want and entry.ann is not None:
            entry = replace(entry, ann=None)
        elif todo:
            entry = replace(entry, ann=build_ann_file(store_dir, np.asarray(seg.vectors), seg.row_ids, config))
        out.append(entry)
    return tuple(out)


def collect_garbage(store_dir: Path, manifest: Manifest) -> int:
    """Unlink every segment/ANN/temp file the manifest does not reference, durably. Caller holds the lock."""
    referenced = manifest.referenced_files()
    removed = 0
    for sub in (SEGMENTS_DIR, ANN_DIR):
        directory = store_dir / sub
        dropped = 0
        for name in os.listdir(directory):
            if f"{sub}/{name}" not in referenced:
                (directory / name).unlink(missing_ok=True)
                dropped += 1
        if dropped:
            fsync_dir(directory)
        removed += dropped
    stale = [name for name in os.listdir(store_dir) if name.startswith(f"{MANIFEST_NAME}.tmp-")]
    for name in stale:
        (store_dir / name).unlink(missing_ok=True)
    if stale:
        fsync_dir(store_dir)
    if removed or stale:
        logger.debug("removed %d unreferenced files from %s", removed + len(stale), store_dir)
    return removed + len(stale)
