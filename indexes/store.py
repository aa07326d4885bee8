"""`GalleryStore`: the gallery of enrolled face embeddings (a directory).

Layout:
    manifest.json              commit point: model version, embedding size, IndexConfig, counts,
                               live segments with their files' sizes and sha256 (`indexes.manifest`)
    LOCK                       writer lock file (fcntl.flock)
    segments/<id>.npy          float32 [rows, D] L2-normalised embeddings, immutable
    segments/<id>.parquet      row_id, identity, image_path, image_sha256, enrolled_at, model_version
    ann/<id>.faiss             optional ANN index of one segment (faiss ids = Parquet row_id)

Why segments: an enrol writes one new small segment (cost independent of the store's size); a delete
rewrites only the segments holding the identity (bounded by IndexConfig.segment_rows), and the old
files -- the only other copies of the deleted embeddings -- are unlinked after the commit; compaction
keeps the number of segments small (`indexes.writer`). Row ids are int64, increasing, never reused.

Search: for "flat" stores all segments' vectors are read into one contiguous in-memory matrix (the
arena, `indexes.arena`) so that an exact search is one BLAS pass; approximate kinds memory-map the
segments and search each segment's faiss index (`indexes.ann`).

Concurrency: writers serialise on the LOCK file, reload the latest manifest under it, write new files,
commit by atomically replacing manifest.json, then unlink what is no longer referenced. Readers take
no file lock: each call works on one manifest generation (`indexes.snapshot`), refreshed when
manifest.json changed (one stat per call). Within one process, a GalleryStore object serialises its
own calls with a threading lock (its arena is updated in place).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from indexes import writer
from indexes.arena import Arena
from indexes.atomic import StoreLock, fsync_dir
from indexes.config import IndexConfig
from indexes.errors import StoreCorrupt, StoreError, StoreWriteError
from indexes.integrity import check_integrity, describe
from indexes.manifest import ANN_DIR, LOCK_NAME, SEGMENTS_DIR, Manifest, read_manifest, utc_now_iso, write_manifest
from indexes.queries import QueryMethods
from indexes.snapshot import Snapshot, load_snapshot, manifest_stat_key
from indexes.validation import (check_identities, check_model_version, check_positive_int, check_sha256,
                                check_strings, check_threshold, check_vectors)

logger = logging.getLogger(__name__)
EnrollResult = writer.EnrollResult


class GalleryStore(QueryMethods):
    """A gallery store directory; create with `GalleryStore.create`, open with `GalleryStore.open`."""

    def __init__(self, path: Path, lock_timeout_s: float) -> None:
        """Use `GalleryStore.open` / `GalleryStore.create`."""
        self._path = path
        self._lock_timeout_s = lock_timeout_s
        # One lock orders this object's reads and its arena updates (see indexes.arena); processes
        # coordinate through manifest.json and the LOCK file instead.
        self._lock = threading.RLock()
        self._arena: Arena | None = None
        self._snapshot: Snapshot | None = None
        self._snapshot = self._load()

    def _load(self) -> Snapshot:
        previous = self._snapshot
        if self._arena is None:
            self._arena = Arena(read_manifest(self._path).embedding_dim)
        try:
            return load_snapshot(self._path, previous, self._arena)
        except BaseException:
            # the arena may be half updated: forget it and the snapshot using it, reload fully next time
            self._arena, self._snapshot = None, None
            raise

    # ----------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, model_version: str, embedding_dim: int,
               threshold: float | None = None, model_path: str | None = None, index: IndexConfig = IndexConfig(),
               lock_timeout_s: float = 30.0) -> GalleryStore:
        """Create an empty store at `path` (must not exist, or be an empty directory).

        threshold: the model's calibrated cosine threshold (used when identify/verify get none).
        model_path: where the model artefact lives (informational).
        The directory is built under a temporary name and renamed into place, so a crash never
        leaves a half-created store at `path`.
        """
        path = Path(path)
        if not isinstance(model_version, str) or not model_version:
            raise StoreError(f"model_version must be a non-empty string, got {model_version!r}")
        dim = check_positive_int(embedding_dim, "embedding_dim")
        if threshold is not None:
            threshold = check_threshold(threshold)
        if not isinstance(index, IndexConfig):
            raise StoreError(f"index must be an IndexConfig, got {type(index).__name__}")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(f"{path} already exists and is not an empty directory; choose a new path, or open the "
                             "existing store with GalleryStore.open")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex}"
        tmp.mkdir()
        for sub in (SEGMENTS_DIR, ANN_DIR):
            (tmp / sub).mkdir()
            fsync_dir(tmp / sub)
        (tmp / LOCK_NAME).touch()
        now = utc_now_iso()
        write_manifest(tmp, Manifest(model_version=model_version, embedding_dim=dim, index=index, created_at=now,
                                     updated_at=now, model_path=None if model_path is None else str(model_path),
                                     threshold=threshold))
        try:
            os.rename(tmp, path)  # atomic; fails if `path` became non-empty meanwhile
        except OSError as exc:
            raise StoreError(f"could not create {path} ({exc}); it may have been created concurrently") from exc
        fsync_dir(path.parent)
        logger.info("created gallery store %s (model %s, dim %d, index %s)", path, model_version, dim, index.kind)
        return cls.open(path, lock_timeout_s=lock_timeout_s)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, model_version: str | None = None,
             lock_timeout_s: float = 30.0) -> GalleryStore:
        """Open a store, checking every listed file exists with its recorded size and agrees with the manifest.

        model_version given and different from the store's -> ModelVersionMismatch.
        If no writer holds the lock, files orphaned by an interrupted write are removed.
        """
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"gallery store {path} does not exist (or is not a directory); create it with "
                             "GalleryStore.create or `facepipe enroll`")
        store = cls(path, lock_timeout_s)
        if model_version is not None:
            check_model_version(path, store.model_version, model_version, "open it", store.model_path)
        lock = StoreLock(path / LOCK_NAME, lock_timeout_s)
        try:
            if lock.try_acquire():
                try:
                    writer.collect_garbage(path, read_manifest(path))
                finally:
                    lock.release()
        except OSError as exc:  # read-only store: nothing can be orphaned by us, reading still works
            logger.debug("skipping garbage collection of %s: %s", path, exc)
        return store

    # ----------------------------------------------------------------- state
    def _current(self) -> Snapshot:
        with self._lock:
            snap = self._snapshot
            try:
                key = manifest_stat_key(self._path)
            except FileNotFoundError:
                raise StoreCorrupt(f"{self._path}/manifest.json has disappeared; "
                                   "restore the store from a backup") from None
            if self._arena is not None and self._arena.broken:  # a failed materialize: start over
                self._arena, self._snapshot = None, None
            snap = self._snapshot
            if snap is None or key != snap.stat_key:
                snap = self._snapshot = self._load()
            return snap

    @contextmanager
    def _reading(self) -> Iterator[Snapshot]:
        """The latest snapshot, with this object's lock held while it is used."""
        with self._lock:
            yield self._current()

    def refresh(self) -> None:
        """Load the latest committed state (reads do this automatically)."""
        self._current()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def model_version(self) -> str:
        return self._current().manifest.model_version

    @property
    def embedding_dim(self) -> int:
        return self._current().manifest.embedding_dim

    @property
    def threshold(self) -> float | None:
        return self._current().manifest.threshold

    @property
    def model_path(self) -> str | None:
        return self._current().manifest.model_path

    @property
    def index_config(self) -> IndexConfig:
        return self._current().manifest.index

    def __len__(self) -> int:
        return self._current().manifest.rows

    def __repr__(self) -> str:
        m = self._current().manifest
        return (f"GalleryStore({str(self.path)!r}, model_version={m.model_version!r}, rows={m.rows}, "
                f"index={m.index.kind!r})")

    def identities(self) -> list[str]:
        """Sorted distinct enrolled identities."""
        with self._reading() as snap:
            return snap.identities()

    def metadata(self) -> pd.DataFrame:
        """Live metadata rows ordered by row_id.

        Columns: row_id (int64), identity, image_path, image_sha256, enrolled_at (UTC), model_version.
        """
        with self._reading() as snap:
            table = snap.metadata_table()
        return table.to_pandas(use_threads=False)  # see segments.load_segment: no Arrow pool threads

    def get_embeddings(self, row_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Stored embeddings of row ids [n] (integers) -> [n, D] float32."""
        ids = np.asarray(row_ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise StoreError(f"row_ids must be a 1-D array of integers, got dtype {ids.dtype} shape {ids.shape}")
        with self._reading() as snap:
            return snap.embeddings(ids.astype(np.int64))

    # ----------------------------------------------------------------- writes
    @contextmanager
    def _writing(self) -> Iterator[Snapshot]:
        """Hold the writer lock on the latest state; on failure remove the files written so far."""
        with StoreLock(self.path / LOCK_NAME, self._lock_timeout_s), self._lock:
            snap = self._current()
            writer.collect_garbage(snap.path, snap.manifest)
            try:
                yield snap
            except BaseException as exc:
                try:  # remove this write's unreferenced files; the original error is what the caller needs
                    writer.collect_garbage(snap.path, read_manifest(snap.path))
                except Exception as cleanup:  # noqa: BLE001 - reported, then the original error propagates
                    logger.warning("could not clean up after a failed write to %s: %s", snap.path, cleanup)
                if isinstance(exc, OSError) and not isinstance(exc, StoreWriteError):
                    raise self._write_error(exc, snap.manifest.generation) from exc
                raise

    def _write_error(self, exc: OSError, generation: int) -> StoreWriteError:
        """A failed write's OSError (disk full...) restated with the store and whether anything was committed."""
        try:
            now: int | None = read_manifest(self._path).generation
        except Exception:  # noqa: BLE001 - the message then says the state could not be read back
            now = None
        state = ("nothing was committed: the store is unchanged (the files of this write were removed)"
                 if now == generation else "its manifest could not be read back: run `facepipe info --check`"
                 if now is None else f"generation {now} was committed before the failure (the store is consistent)")
        message = (f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''} while writing to the gallery "
                   f"store {self._path}; {state}; free disk space (or fix the I/O error) and retry")
        return StoreWriteError(exc.errno, message) if exc.errno is not None else StoreWriteError(message)

    def _commit(self, snap: Snapshot, manifest: Manifest) -> Snapshot:
        for sub in (SEGMENTS_DIR, ANN_DIR):
            fsync_dir(snap.path / sub)
        write_manifest(snap.path, manifest)  # the commit point
        new = self._snapshot = self._load()
        writer.collect_garbage(snap.path, new.manifest)  # old versions: deleted rows become unrecoverable here
        return new

    def _auto_compact(self, snap: Snapshot) -> Snapshot:
        """Merge small segments after a committed enrol/delete. An OSError (disk full) is logged, not raised: the
        enrol/delete is already durable, so failing the call would make callers retry a write that happened."""
        chosen = writer.plan_auto_compaction([seg.rows for seg in snap.segments], snap.manifest.index)
        if not chosen:
            return snap
        config = snap.manifest.index
        try:
            merged = writer.merge_segments(snap.path, [snap.segments[i] for i in chosen], config,
                                           build_ann=config.approximate)
            return self._commit(snap, snap.manifest.evolve(segments=writer.apply_merge(snap.manifest, chosen, merged)))
        except (OSError, StoreCorrupt) as exc:  # StoreCorrupt: a damaged source segment, refused (the next read raises)
            logger.warning("automatic compaction of %s failed after the write was committed (%s); the store is "
                           "consistent and the next write retries it", snap.path, exc)
            try:
                writer.collect_garbage(snap.path, read_manifest(snap.path))
            except Exception as cleanup:  # noqa: BLE001 - leftovers are collected by the next writer
                logger.warning("could not clean up after the failed compaction of %s: %s", snap.path, cleanup)
            return snap

    def enroll(self, embeddings: np.ndarray, identities: Sequence[str], image_paths: Sequence[str],
               image_sha256: Sequence[str], *, model_version: str) -> EnrollResult:
        """Add images: embeddings [N, D] float32 (L2-normalised), one identity / path / sha256 per row.

        Images whose sha256 is already stored, or repeated within the call, are skipped and reported in
        `duplicates`. All added rows become visible in one atomic commit (an automatic compaction may
        follow as a separate commit that changes no content).
        """
        started = time.perf_counter()
        snap = self._current()
        check_model_version(snap.path, snap.manifest.model_version, model_version, "enrol these embeddings",
                            snap.manifest.model_path)
        vectors = check_vectors(embeddings, snap.manifest.embedding_dim, "embeddings")
        n = vectors.shape[0]
        names = check_identities(identities, n)
        paths = check_strings(image_paths, n, "image_paths")
        shas = check_sha256(image_sha256, n)
        with self._writing() as snap:
            keep, added, duplicates = writer.plan_enrollment(snap.segments, names, paths, shas,
                                                             snap.manifest.next_row_id)
            if keep:
                table = writer.rows_table(added, snap.manifest.model_version)
                rows = vectors if len(keep) == n else vectors[keep]
                entries = writer.write_rows(snap.path, rows, table, snap.manifest.index)
                distinct = pa.array(sorted(set(added["identity"])), pa.string())
                new_names = int((~snap.has_identities(distinct)).sum())
                m = snap.manifest
                snap = self._commit(snap, m.evolve(segments=m.segments + tuple(entries), rows=m.rows + len(keep),
                                                   identities=m.identities + new_names,
                                                   next_row_id=m.next_row_id + len(keep)))
                self._auto_compact(snap)
        logger.info("enrolled %d rows (%d duplicates skipped) into %s in %.3f s", len(keep), len(duplicates), self.path,
                    time.perf_counter() - started)
        return EnrollResult(added=added, duplicates=duplicates)

    def remove_identity(self, identity: str) -> int:
        """Delete every row of `identity` from index, metadata and embeddings, durably -> rows removed (0 if unknown).

        The segments holding the identity are rewritten without it and the old files unlinked (fsynced)
        before this returns; no file of the store keeps the removed embeddings or metadata.
        """
        name = check_strings([identity], 1, "identity")[0]
        with self._writing() as snap:
            entries, removed = [], 0
            for seg in snap.segments:
                _, pos = seg.positions_of(pa.array([name], pa.string()))
                if pos.size == 0:
                    entries.append(seg.entry)
                    continue
                removed += pos.size
                rewritten = writer.rewrite_without(snap.path, seg, pos)
                if rewritten is not None:
                    entries.append(rewritten)
            if removed:
                m = snap.manifest
                snap = self._commit(snap, m.evolve(segments=tuple(entries), rows=m.rows - removed,
                                                   identities=m.identities - 1))
                self._auto_compact(snap)
        logger.info("removed %d rows of one identity from %s", removed, self.path)
        return removed

    def compact(self) -> None:
        """Merge all segments below segment_rows into sealed segments; build/refresh ANN indexes and recall."""
        with self._writing() as snap:
            config = snap.manifest.index
            chosen = writer.plan_full_compaction([seg.rows for seg in snap.segments], config)
            if chosen:
                merged = writer.merge_segments(snap.path, [snap.segments[i] for i in chosen], config,
                                               build_ann=config.approximate)
                snap = self._commit(snap, snap.manifest.evolve(
                    segments=writer.apply_merge(snap.manifest, chosen, merged)))
            entries = writer.build_missing_ann(snap.path, snap.segments, config)
            if entries != tuple(seg.entry for seg in snap.segments):
                snap = self._commit(snap, snap.manifest.evolve(segments=entries))
            recall = None
            if any(seg.entry.ann is not None for seg in snap.segments):
                recall = {"k": config.recall_k, "n_queries": min(config.recall_queries, snap.rows),
                          "recall": self._measure_recall(snap, config.recall_k, config.recall_queries, 0),
                          "generation": snap.manifest.generation + 1, "measured_at": utc_now_iso()}
            if recall != snap.manifest.ann_recall:
                self._commit(snap, snap.manifest.evolve(ann_recall=recall))

    def set_threshold(self, threshold: float | None) -> None:
        """Record a new default cosine threshold (e.g. after re-calibrating the model); None clears it."""
        value = None if threshold is None else check_threshold(threshold)
        with self._writing() as snap:
            self._commit(snap, snap.manifest.evolve(threshold=value))

    def set_index_config(self, index: IndexConfig) -> None:
        """Change the IndexConfig (e.g. switch to "hnsw"); ANN indexes are built by the next `compact()`."""
        if not isinstance(index, IndexConfig):
            raise StoreError(f"index must be an IndexConfig, got {type(index).__name__}")
        with self._writing() as snap:
            self._commit(snap, snap.manifest.evolve(index=index))

    # ----------------------------------------------------------------- inspection
    def info(self) -> dict[str, Any]:
        """JSON-able description: path, versions, dim, index, counts, segments, bytes on disk, threshold, ANN recall."""
        with self._reading() as snap:
            return describe(snap)

    def verify_integrity(self) -> None:
        """Full check: sha256 of every file against the manifest, structure, counts.

        Raises StoreCorrupt naming the file.
        """
        check_integrity(self._current().path)
