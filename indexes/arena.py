"""Arena: one contiguous in-memory float32 matrix holding the vectors of every live segment.

Why: exact search is memory-bandwidth bound; scanning the gallery with one BLAS call over contiguous
memory is as fast as numpy on a single array, whereas one call per segment adds a thread
synchronisation per segment (measured ~30% slower at 16 segments x 65k rows on a loaded 2-core box).

How: each segment occupies a row range [start, start + rows). A new snapshot keeps the ranges of the
segments it still has, reuses a freed range that fits (best fit: a delete's rewritten segment goes
back where the old one was) or appends after the last row. Rows in freed ranges ("holes") are masked
with -inf by the search. The matrix is rebuilt compactly when holes exceed 10% of the live rows or
the capacity is exhausted. Capacity beyond the used rows is allocated but never touched, so it does
not count in the resident size. Only the owning `GalleryStore` mutates its arena, under its lock,
so no search runs while a range is being overwritten; if a placement fails half-way the arena is
marked broken and the store reloads from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from indexes.manifest import SegmentEntry

logger = logging.getLogger(__name__)

_HOLE_FRACTION = 0.10
_MIN_SPARE_ROWS = 65536

Fill = Callable[[SegmentEntry, np.ndarray], None]  # writes a segment's vectors into a [rows, D] view


def _aligned_empty(rows: int, dim: int) -> np.ndarray:
    """Uninitialised [rows, dim] float32 starting on a 4 KiB boundary (full-width SIMD loads, like numpy's own)."""
    raw = np.empty(rows * dim * 4 + 4096, np.uint8)
    skip = (-raw.ctypes.data) % 4096
    return raw[skip: skip + rows * dim * 4].view(np.float32).reshape(rows, dim)


def run_fills(fill: Fill, jobs: list[tuple[SegmentEntry, np.ndarray]]) -> None:
    """Run fills on a few threads: file reads and page faults on fresh memory release the GIL."""
    if len(jobs) <= 1:
        for entry, out in jobs:
            fill(entry, out)
        return
    # I/O bound when the files are not cached: more threads than cores keep more reads in flight
    with ThreadPoolExecutor(max_workers=min(len(jobs), 4)) as pool:
        for future in [pool.submit(fill, entry, out) for entry, out in jobs]:
            future.result()


class Arena:
    """Placement of segment vectors in one growable [capacity, D] float32 buffer."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.buf = np.empty((0, dim), np.float32)
        self.used = 0
        self.placed: dict[str, tuple[int, int]] = {}  # segment id -> (start, rows)
        self.broken = False  # a place() failed half-way: the owner must reload from scratch

    def clear(self) -> None:
        """Drop every placement and the buffer (the store switched to memory-mapped segments)."""
        self.buf = np.empty((0, self.dim), np.float32)
        self.used = 0
        self.placed = {}
        self.broken = False

    def _gaps(self, placed: dict[str, tuple[int, int]], used: int) -> list[tuple[int, int]]:
        gaps, cursor = [], 0
        for start, rows in sorted(placed.values()):
            if start > cursor:
                gaps.append((cursor, start - cursor))
            cursor = start + rows
        if used > cursor:
            gaps.append((cursor, used - cursor))
        return gaps

    def place(self, entries: Sequence[SegmentEntry], fill: Fill) -> None:
        """Make `entries` (and only them) live in the buffer, filling new ones through `fill`."""
        self.broken = True
        if not entries:
            self.placed, self.used = {}, 0
            self.broken = False
            return
        wanted = {e.id for e in entries}
        placed = {sid: r for sid, r in self.placed.items() if sid in wanted}
        new = [e for e in entries if e.id not in placed]
        live = sum(rows for _, rows in placed.values()) + sum(e.rows for e in new)
        gaps = self._gaps(placed, self.used)
        used = self.used
        targets: dict[str, int] = {}
        for entry in sorted(new, key=lambda e: -e.rows):
            fitting = [g for g in gaps if g[1] >= entry.rows]
            if fitting:
                start, length = min(fitting, key=lambda g: g[1])
                gaps.remove((start, length))
                if length > entry.rows:
                    gaps.append((start + entry.rows, length - entry.rows))
            else:
                start = used
                used += entry.rows
            targets[entry.id] = start
        holes = used - live
        if used > self.buf.shape[0] or holes > _HOLE_FRACTION * max(live, 1) + 1024:
            self._rebuild(entries, placed, live, fill)
            self.broken = False
            return
        jobs = []
        for entry in new:
            start = targets[entry.id]
            jobs.append((entry, self.buf[start: start + entry.rows]))
            placed[entry.id] = (start, entry.rows)
        run_fills(fill, jobs)
        self.placed, self.used = placed, used
        self.broken = False

    def _rebuild(self, entries: Sequence[SegmentEntry], placed: dict[str, tuple[int, int]], live: int,
                 fill: Fill) -> None:
        capacity = max(2 * live, live + _MIN_SPARE_ROWS)
        buf = _aligned_empty(capacity, self.dim)  # untouched pages are not resident
        cursor, new_placed, jobs = 0, {}, []
        for entry in entries:
            target = buf[cursor: cursor + entry.rows]
            if entry.id in placed:
                start, rows = placed[entry.id]
                target[:] = self.buf[start: start + rows]
            else:
                jobs.append((entry, target))
            new_placed[entry.id] = (cursor, entry.rows)
            cursor += entry.rows
        run_fills(fill, jobs)
        logger.debug("arena rebuilt: %d live rows, capacity %d", live, capacity)
        self.buf, self.used, self.placed = buf, cursor, new_placed

    def view(self, segment_id: str) -> np.ndarray:
        """The [rows, D] rows of a placed segment (a view into the buffer)."""
        start, rows = self.placed[segment_id]
        return self.buf[start: start + rows]

    def start(self, segment_id: str) -> int:
        return self.placed[segment_id][0]

    def holes(self) -> list[tuple[int, int]]:
        """Row ranges [a, b) of the used part that belong to no live segment."""
        return [(start, start + length) for start, length in self._gaps(self.placed, self.used)]
