"""Immutable segments: `segments/<id>.npy` (float32 [rows, D]) + `segments/<id>.parquet` (metadata).

A segment is written once under a fresh random id and never modified; a delete writes a new segment
without the removed rows and the old files are unlinked once the manifest no longer lists them.
Row `i` of the .npy is the row whose Parquet `row_id` is `row_ids[i]`; row ids are strictly increasing
inside a segment. Vectors are memory-mapped read-only: opening is O(metadata), the OS page cache is
shared between processes, and the files are never written in place so the mapping is stable.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import mmap
import os
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexes.atomic import write_new_file
from indexes.errors import StoreCorrupt, StoreError
from indexes.manifest import SEGMENTS_DIR, FileEntry, SegmentEntry

logger = logging.getLogger(__name__)

METADATA_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("enrolled_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
    ]
)

_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUES[_c] = _i


def sha_prefix_u64(hex_digests: Sequence[str]) -> np.ndarray:
    """First 64 bits of each lowercase hex sha256 -> uint64 [n] (a compact hash key)."""
    return np.array([int(h[:16], 16) for h in hex_digests], dtype=np.uint64)


def _arrow_sha_prefix_u64(column: pa.ChunkedArray, where: Path) -> np.ndarray:
    """Vectorised `sha_prefix_u64` over an Arrow string column (no Python string objects)."""
    arr = column.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offset_dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=offset_dtype)[arr.offset: arr.offset + n + 1]
    if np.any(np.diff(offsets) != 64):
        raise StoreCorrupt(f"{where}: an image_sha256 value is not 64 characters; restore the store from a backup")
    chars = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[0] + 64 * n].reshape(n, 64)
    nibbles = _HEX_VALUES[chars[:, :16]]
    if np.any(nibbles == 255):
        raise StoreCorrupt(f"{where}: an image_sha256 value is not lowercase hex; restore the store from a backup")
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]  # [n, 8] bytes, most significant first
    return packed.view(">u8").ravel().astype(np.uint64)


_HASH_PRIME = np.uint64(0x100000001B3)
_MAX_POWERS = [np.ones(1, np.uint64)]


def _powers(length: int) -> np.ndarray:
    """_HASH_PRIME ** i mod 2**64 for i < length (cached, grown on demand)."""
    if _MAX_POWERS[0].size < length:
        powers = np.ones(max(length, 2 * _MAX_POWERS[0].size), np.uint64)
        with np.errstate(over="ignore"):
            for i in range(1, powers.size):
                powers[i] = powers[i - 1] * _HASH_PRIME
        _MAX_POWERS[0] = powers
    return _MAX_POWERS[0][:length]


def name_hashes(names: pa.Array) -> np.ndarray:
    """64-bit hashes of non-null strings, computed from the Arrow buffers -> uint64 [len(names)].

    A polynomial hash over the UTF-8 bytes (mod 2**64) mixed with the length; vectorised, so a
    segment's lookup table costs milliseconds and no Python string objects. Equal strings hash
    equally; callers confirm hits by comparing the strings (collisions are possible, just rare).
    """
    arr = names.combine_chunks() if isinstance(names, pa.ChunkedArray) else names
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
    lengths = np.diff(offsets)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]] if lengths.sum() else \
        np.zeros(0, np.uint8)
    owner_start = np.repeat(offsets[:-1] - offsets[0], lengths)
    position = np.arange(data.size, dtype=np.int64) - owner_start
    with np.errstate(over="ignore"):
        terms = (data.astype(np.uint64) + np.uint64(1)) * _powers(int(lengths.max(initial=0)) + 1)[position]
        running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
        ends = offsets - offsets[0]
        sums = running[ends[1:]] - running[ends[:-1]]  # per-string sums (wrapping arithmetic)
        mixed = sums ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        mixed ^= mixed >> np.uint64(31)
        mixed *= np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(29)
    return mixed


def npy_header(rows: int, dim: int) -> bytes:
    """The .npy v1.0 header of a C-ordered little-endian float32 [rows, dim] array (64-byte aligned)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return buf.getvalue()


class Segment:
    """A loaded segment: memory-mapped vectors, Arrow metadata and lazily built lookup tables."""

    def __init__(self, entry: SegmentEntry, vectors: np.ndarray | None, table: pa.Table, path: Path) -> None:
        self.entry = entry
        self.vectors = vectors  # [rows, D] float32: a read-only memory map or a view into the arena
        self.table = table
        self.path = path  # the .parquet file, for error messages
        self.row_ids: np.ndarray = table.column("row_id").to_numpy()  # [rows] int64, increasing
        self._verified: set[tuple[str, str]] = set()  # (id, sha256) once the vectors hashed right; shared by clones

    @property
    def rows(self) -> int:
        return self.entry.rows

    @property
    def vectors_verified(self) -> bool:
        return (self.entry.id, self.entry.vectors.sha256) in self._verified

    def mark_vectors_verified(self) -> None:  # their bytes were hashed elsewhere (read into the arena)
        self._verified.add((self.entry.id, self.entry.vectors.sha256))

    def verify_vectors(self) -> np.ndarray:
        """The vectors, once their bytes (expected header + data) hash to the manifest's sha256 (checked the
        first time only, ~1 GB/s); StoreCorrupt names the .npy if it was damaged or edited since written."""
        if self.vectors is None:
            raise StoreError(f"{self.path}: the segment was loaded without its vectors")
        if not self.vectors_verified:
            digest = hashlib.sha256(npy_header(*self.vectors.shape))
            digest.update(memoryview(np.ascontiguousarray(self.vectors)).cast("B"))
            check_digest(self.path.with_name(Path(self.entry.vectors.name).name), digest.hexdigest(),
                         self.entry.vectors.sha256)
            self.mark_vectors_verified()
        return self.vectors

    def with_entry(self, entry: SegmentEntry) -> Segment:
        """The same loaded segment (sharing data and lookup caches) under an updated manifest entry."""
        clone = copy.copy(self)
        clone.entry = entry
        return clone

    def with_vectors(self, vectors: np.ndarray) -> Segment:
        """The same segment whose vectors live elsewhere (e.g. in the arena); caches are shared."""
        clone = copy.copy(self)
        clone.vectors = vectors
        return clone

    @cached_property
    def _identity_index(self) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        # dictionary of distinct names, row positions grouped by name, group boundaries [U + 1]
        encoded = pc.dictionary_encode(self.table.column("identity").combine_chunks())
        codes = encoded.indices.to_numpy().astype(np.int64)
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(encoded.dictionary))
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return encoded.dictionary, order, bounds

    @cached_property
    def _identity_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        # 64-bit hashes of the distinct names, sorted, with their dictionary codes: a lookup table built
        # once per (immutable) segment; pc.index_in would rebuild a hash table on every call
        hashes = name_hashes(self._identity_index[0])
        order = np.argsort(hashes, kind="stable")
        return hashes[order], order.astype(np.int64)

    @cached_property
    def _sha_index(self) -> tuple[np.ndarray, np.ndarray]:
        prefix = _arrow_sha_prefix_u64(self.table.column("image_sha256"), self.path)
        order = np.argsort(prefix, kind="stable")
        return prefix[order], order

    def distinct_identities(self) -> pa.Array:
        """Distinct identity names in this segment (Arrow string array)."""
        return self._identity_index[0]

    def identity_codes(self, names: pa.Array) -> np.ndarray:
        """Code of each name in this segment's dictionary, -1 if absent -> int64 [len(names)]."""
        dictionary = self._identity_index[0]
        sorted_hashes, codes_by_hash = self._identity_hashes
        out = np.full(len(names), -1, np.int64)
        if len(dictionary) == 0 or len(names) == 0:
            return out
        wanted = name_hashes(names)
        lo = np.searchsorted(sorted_hashes, wanted, side="left")
        hi = np.searchsorted(sorted_hashes, wanted, side="right")
        hits = np.flatnonzero(hi > lo)
        if hits.size == 0:
            return out
        first = codes_by_hash[lo[hits]]
        same = pc.equal(dictionary.take(pa.array(first)), names.take(pa.array(hits)))
        same = same.to_numpy(zero_copy_only=False).astype(bool)
        out[hits[same]] = first[same]
        for i in hits[~same]:  # 64-bit hash collision (practically never): check the other candidates
            for j in range(lo[i] + 1, hi[i]):
                if dictionary[int(codes_by_hash[j])].as_py() == names[int(i)].as_py():
                    out[i] = codes_by_hash[j]
                    break
        return out

    def positions_of(self, names: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the given identities -> (owner [m] int64 index into names, positions [m] int64).

        Sorted by owner, then by position (so by row id).
        """
        codes = self.identity_codes(names)
        present = np.flatnonzero(codes >= 0)
        if present.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        _, order, bounds = self._identity_index
        starts = bounds[codes[present]]
        counts = bounds[codes[present] + 1] - starts
        owner = np.repeat(present, counts)
        # concatenated ranges [start, start + count) without a Python loop
        steps = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return owner, order[np.repeat(starts, counts) + steps]

    def find_sha(self, prefixes: np.ndarray, digests: Sequence[str]) -> np.ndarray:
        """Position of each digest in this segment or -1 -> int64 [n]. `prefixes` = sha_prefix_u64(digests)."""
        sorted_prefix, order = self._sha_index
        lo = np.searchsorted(sorted_prefix, prefixes, side="left")
        hi = np.searchsorted(sorted_prefix, prefixes, side="right")
        out = np.full(len(digests), -1, dtype=np.int64)
        column = self.table.column("image_sha256")
        for i in np.flatnonzero(hi > lo):  # only prefix hits (duplicates or 2^-64 collisions)
            for pos in order[lo[i]: hi[i]]:
                if column[int(pos)].as_py() == digests[i]:
                    out[i] = pos
                    break
        return out

    def column_at(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Values of a metadata column at row positions -> numpy array (object for strings)."""
        taken = self.table.column(name).take(pa.array(positions, type=pa.int64()))
        return taken.to_numpy(zero_copy_only=False)


def write_segment(store_dir: Path, vectors: np.ndarray | Sequence[np.ndarray], table: pa.Table) -> SegmentEntry:
    """Write a new segment (both files fsynced; the caller fsyncs the directory and commits).

    vectors: [rows, D] float32, or consecutive row blocks of it (written without concatenating);
    table: METADATA_SCHEMA rows in the same order, row ids strictly increasing.
    """
    seg_id = uuid.uuid4().hex
    parts = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
    parts = [np.ascontiguousarray(part, dtype="<f4") for part in parts]
    rows, dim = sum(part.shape[0] for part in parts), parts[0].shape[1]
    vec_name = f"{SEGMENTS_DIR}/{seg_id}.npy"
    written = write_new_file(store_dir / vec_name,
                             [npy_header(rows, dim), *(memoryview(part).cast("B") for part in parts if part.size)])
    vec_entry = FileEntry(name=vec_name, size=written.size, sha256=written.sha256)
    buf = pa.BufferOutputStream()
    pq.write_table(table.cast(METADATA_SCHEMA), buf, compression="zstd")
    meta_name = f"{SEGMENTS_DIR}/{seg_id}.parquet"
    written = write_new_file(store_dir / meta_name, [memoryview(buf.getvalue())])
    meta_entry = FileEntry(name=meta_name, size=written.size, sha256=written.sha256)
    row_ids = table.column("row_id")
    return SegmentEntry(id=seg_id, rows=rows, min_row_id=pc.min(row_ids).as_py(), max_row_id=pc.max(row_ids).as_py(),
                        vectors=vec_entry, metadata=meta_entry)


def check_file_size(path: Path, expected: int) -> None:
    """Raise FileNotFoundError if absent, StoreCorrupt if its size differs from the manifest's."""
    size = os.stat(path).st_size
    if size != expected:
        raise StoreCorrupt(
            f"{path} is {size} bytes but manifest.json records {expected} (truncated or overwritten); "
            "restore the store directory from a backup or re-enrol the gallery"
        )


def check_digest(path: Path, actual: str, expected: str) -> None:
    """StoreCorrupt naming `path` if the sha256 of its bytes (hex) is not the one manifest.json records."""
    if actual != expected:
        raise StoreCorrupt(f"{path} has sha256 {actual[:16]}..., manifest.json records {expected[:16]}... (its content "
                           "changed after it was written); restore the store directory from a backup")


def open_vectors(store_dir: Path, entry: SegmentEntry, dim: int) -> BinaryIO:
    """Open a segment's .npy positioned at its data, after checking size and header.

    Raises FileNotFoundError if absent (the caller decides whether a concurrent commit explains it).
    """
    path = store_dir / entry.vectors.name
    header = npy_header(entry.rows, dim)
    check_file_size(path, entry.vectors.size)
    handle = open(path, "rb")
    if entry.vectors.size != len(header) + entry.rows * dim * 4 or handle.read(len(header)) != header:
        handle.close()
        raise StoreCorrupt(f"{path}: header or size is not that of float32 ({entry.rows}, {dim}) as manifest.json "
                           "expects; restore the store from a backup")
    return handle


def map_vectors(store_dir: Path, entry: SegmentEntry, dim: int) -> np.ndarray:
    """Memory-map a segment's vectors read-only -> [rows, D] float32 view of an `mmap.mmap`, after open_vectors' checks.

    The header was compared byte for byte with the expected one, so it is not parsed again (np.load
    parses it with `ast`, which is not thread-safe on Python 3.11 and these loads run in threads).
    """
    with open_vectors(store_dir, entry, dim) as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    header = len(npy_header(entry.rows, dim))
    return np.frombuffer(mapping, dtype="<f4", count=entry.rows * dim, offset=header).reshape(entry.rows, dim)


def _mapping_of(vectors: np.ndarray | None) -> mmap.mmap | None:
    base: object = vectors
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def is_mapped(vectors: np.ndarray | None) -> bool:
    """True if the array is a view of a memory-mapped segment file."""
    return _mapping_of(vectors) is not None


def read_vectors_into(store_dir: Path, entry: SegmentEntry, mapped: np.ndarray, out: np.ndarray, *,
                      verify: bool = True) -> None:
    """Copy a segment's vectors into `out` ([rows, D] float32) with large sequential reads.

    From a cold page cache this was ~4x faster here than copying the memory map page by page. If the
    file was unlinked since it was mapped (a later commit replaced it), the mapping still holds the
    same bytes and is copied instead. With `verify`, header and data are hashed as they are read (the
    expected header + the copy in the fallback): StoreCorrupt if they differ from the manifest's sha256."""
    path = store_dir / entry.vectors.name
    digest = hashlib.sha256()
    try:
        handle = open(path, "rb", buffering=0)
    except FileNotFoundError:
        np.copyto(out, mapped)
        for chunk in (npy_header(entry.rows, mapped.shape[1]), memoryview(out).cast("B")) if verify else ():
            digest.update(chunk)
    else:
        with handle:
            digest.update(handle.read(len(npy_header(entry.rows, mapped.shape[1]))))  # the file's own header
            view = memoryview(out).cast("B")
            while view.nbytes:
                got = handle.readinto(view[: 16 << 20])
                if not got:
                    raise StoreCorrupt(f"{path}: shorter than manifest.json records; restore the store from a backup")
                if verify:
                    digest.update(view[:got])
                view = view[got:]
    if verify:
        check_digest(path, digest.hexdigest(), entry.vectors.sha256)


def load_segment(store_dir: Path, entry: SegmentEntry, dim: int, *, mapped: bool) -> Segment:
    """Open a segment's metadata with cheap consistency checks (sizes, schema, row ids).

    mapped: also memory-map its vectors (else `vectors` is None: the caller reads them into the arena).
    Raises FileNotFoundError for a missing file and StoreCorrupt for anything inconsistent.
    """
    meta_path = store_dir / entry.metadata.name
    vectors = map_vectors(store_dir, entry, dim) if mapped else None
    check_file_size(meta_path, entry.metadata.size)
    data = meta_path.read_bytes()  # read once: hashed, then parsed from memory
    check_digest(meta_path, hashlib.sha256(data).hexdigest(), entry.metadata.sha256)
    try:
        # one thread: metadata files are small, and Arrow's pool can abort the process at exit (apache/arrow#34314)
        table = pq.read_table(pa.BufferReader(data), use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise StoreCorrupt(f"{meta_path}: unreadable Parquet ({exc}); restore the store from a backup") from exc
    if not table.schema.equals(METADATA_SCHEMA, check_metadata=False):
        raise StoreCorrupt(f"{meta_path}: schema {table.schema} is not the gallery metadata schema {METADATA_SCHEMA}")
    segment = Segment(entry, vectors, table, meta_path)
    ids = segment.row_ids
    if ids.shape[0] != entry.rows or (ids.size and (ids[0] != entry.min_row_id or ids[-1] != entry.max_row_id)) \
            or np.any(np.diff(ids) <= 0):
        raise StoreCorrupt(f"{meta_path}: {ids.shape[0]} rows / row ids disagree with manifest.json "
                           f"({entry.rows} rows, ids {entry.min_row_id}..{entry.max_row_id}); restore from a backup")
    return segment
