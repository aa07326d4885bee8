"""On-disk cache of teacher embeddings, keyed by (image sha256, teacher version, aligner version).

One Parquet file per (teacher version, aligner version) pair in a cache folder, named
``teacher-<name>-<key>.parquet`` where ``key`` hashes the two versions; the full versions are in the file's
metadata and checked on read. Columns: ``image_sha256`` (string), ``embedding`` (fixed_size_list<float32>[D]),
sorted by sha256.

``TeacherCache.get_or_compute`` returns embeddings for a list of image sha256s, computing only the missing ones
-- in worker processes, each building its own teacher from ``teacher.spec()`` (OpenCV and dlib models cannot be
pickled) and calling ``crops_provider`` itself, so decoding and alignment run in parallel too. New rows are
merged into the file every ``flush_every`` rows and at the end (also when a worker fails), under a lock file,
written atomically (temp file + fsync + ``os.replace`` via :func:`pipeline.core.io.write_parquet_atomic`).

``erase(sha256s)`` removes rows from every file of the cache (data-protection erasure). It rewrites the files;
it does not scrub freed disk blocks. Rows keyed by something derived from images (a teacher view blends and
swaps several photos, `pipeline.train.teacher_views`) are registered with ``record_sources`` in
``derived-sources.parquet`` (columns ``key``, ``source``), and erasing any of their source images erases them too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import FileLock, write_parquet_atomic
from pipeline.model.teachers.base import (
    Teacher,
    check_sha256s,
)
from pipeline.model.teachers.compute import CropsProvider, compute_missing
from pipeline.model.teachers.precomputed import embeddings_table, table_embeddings

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
META_KEY = b"facepipe.teacher_cache"
FILE_GLOB = "teacher-*.parquet"
LOCK_NAME = ".teacher-cache.lock"
SOURCES_NAME = "derived-sources.parquet"  # derived row key -> the image sha256s it was made of

#: ``crops_provider(sha256s) -> uint8 (len(sha256s), 112, 112, 3)`` RGB aligned crops, in the same order.
#: ``progress(done, total)``: images available so far (cached + computed) out of the distinct ones asked for.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CacheEntry:
    """One cache file: its path, versions, embedding size and row count."""

    path: Path
    teacher_name: str
    teacher_version: str
    aligner_version: str
    embedding_dim: int
    rows: int


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "teacher"


class TeacherCache:
    """Teacher embeddings cached in ``cache_dir`` (created if missing).

    Writers (merges, erasure) hold ``<cache_dir>/.teacher-cache.lock``; ``lock_timeout_s`` bounds the wait.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], *, lock_timeout_s: float = 600.0) -> None:
        self.dir = Path(cache_dir)
        self.lock_timeout_s = float(lock_timeout_s)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"teacher cache folder {self.dir} cannot be created: {exc.strerror or exc}") from exc

    # ----------------------------------------------------------------- files
    def path_for(self, teacher: Teacher, aligner_version: str) -> Path:
        """The Parquet file for ``teacher`` x ``aligner_version`` (may not exist yet)."""
        key = hashlib.sha256(f"{teacher.version}\n{aligner_version}".encode()).hexdigest()[:20]
        return self.dir / f"teacher-{_slug(teacher.name)}-{key}.parquet"

    def _locked(self) -> FileLock:
        return FileLock(self.dir / LOCK_NAME, self.lock_timeout_s, what=f"the teacher cache {self.dir}")

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, Any], list[str], np.ndarray]:
        """(metadata, sha256s, float32 (N, D)) of one cache file.

        Raises:
            DataError: unreadable or not a teacher-cache file (the message names it and says to delete it).
        """
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[META_KEY])
            shas, emb = table_embeddings(table, source=path)
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise DataError(f"teacher cache file {path} is unreadable or not a teacher cache ({exc}); "
                            "delete it to recompute") from exc
        return meta, shas, emb

    def _write(self, path: Path, meta: dict[str, Any], shas: list[str], emb: np.ndarray) -> None:
        order = np.argsort(np.asarray(shas, dtype=object)) if shas else np.zeros(0, dtype=np.int64)
        table = embeddings_table([shas[i] for i in order], emb[order].reshape(len(shas), meta["embedding_dim"]),
                                 {META_KEY: json.dumps(meta, sort_keys=True).encode()})
        write_parquet_atomic(table, path)

    @staticmethod
    def _meta(teacher: Teacher, aligner_version: str) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "teacher_name": teacher.name, "teacher_version": teacher.version,
                "aligner_version": aligner_version, "embedding_dim": int(teacher.embedding_dim),
                "licence": teacher.licence}

    def _load(self, path: Path, meta: dict[str, Any]) -> tuple[list[str], np.ndarray]:
        if not path.exists():
            return [], np.zeros((0, meta["embedding_dim"]), dtype=np.float32)
        got, shas, emb = self._read(path)
        for k in ("teacher_version", "aligner_version", "embedding_dim"):
            if got.get(k) != meta[k]:
                raise DataError(f"teacher cache file {path} holds {k}={got.get(k)!r}, expected {meta[k]!r}; "
                                "delete it to recompute")
        if emb.shape[1] != meta["embedding_dim"] and len(shas):
            raise DataError(f"teacher cache file {path} has {emb.shape[1]}-d rows, expected {meta['embedding_dim']}")
        return shas, emb.reshape(len(shas), meta["embedding_dim"])

    def _merge(self, path: Path, meta: dict[str, Any], new: dict[str, np.ndarray]) -> None:
        """Add ``new`` rows to ``path`` (re-read under the lock, so concurrent writers do not lose rows)."""
        if not new:
            return
        with self._locked():
            shas, emb = self._load(path, meta)
            keep = [i for i, s in enumerate(shas) if s not in new]
            all_shas = [shas[i] for i in keep] + list(new)
            all_emb = np.concatenate([emb[keep], np.stack(list(new.values())).astype(np.float32)])
            self._write(path, meta, all_shas, all_emb)
        log.debug("teacher cache %s: +%d rows (%d total)", path.name, len(new), len(all_shas))

    def load(self, teacher: Teacher, aligner_version: str) -> tuple[list[str], np.ndarray]:
        """Everything cached for this pair: ``(sha256s, float32 (N, D))`` (empty when nothing is)."""
        return self._load(self.path_for(teacher, aligner_version), self._meta(teacher, aligner_version))

    def entries(self) -> list[CacheEntry]:
        """The cache files with their versions and row counts."""
        out = []
        for p in sorted(self.dir.glob(FILE_GLOB)):
            meta, shas, _emb = self._read(p)
            out.append(CacheEntry(p, meta.get("teacher_name", ""), meta.get("teacher_version", ""),
                                  meta.get("aligner_version", ""), int(meta.get("embedding_dim", 0)), len(shas)))
        return out

    # ----------------------------------------------------------------- derived rows
    def _read_sources(self) -> tuple[list[str], list[str]]:
        path = self.dir / SOURCES_NAME
        if not path.is_file():
            return [], []
        try:
            t = pq.read_table(path)
            return t.column("key").to_pylist(), t.column("source").to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
            raise DataError(f"teacher cache {path}: unreadable ({exc}); delete it and the teacher-*.parquet files "
                            "beside it (they are recomputed)") from None

    def _write_sources(self, keys: list[str], sources: list[str]) -> None:
        write_parquet_atomic(pa.table({"key": pa.array(keys, pa.string()), "source": pa.array(sources, pa.string())}),
                             self.dir / SOURCES_NAME)

    def record_sources(self, sources: dict[str, Sequence[str]]) -> int:
        """Register rows keyed by something other than an image sha256: ``sources[key]`` = the sha256s of the
        images the row was made of. Erasing any of them (``erase``) then erases the row. Returns the new links."""
        check_sha256s(list(sources))
        new = [(k, s) for k, srcs in sources.items() for s in check_sha256s(list(srcs))]
        with self._locked():
            keys, srcs = self._read_sources()
            have = set(zip(keys, srcs))
            new = [ks for ks in dict.fromkeys(new) if ks not in have]
            if new:
                self._write_sources(keys + [k for k, _ in new], srcs + [s for _, s in new])
        return len(new)

    # ----------------------------------------------------------------- erase
    def erase(self, sha256s: Sequence[str]) -> int:
        """Remove the rows of these images from every file of the cache, and the rows derived from them
        (``record_sources``); returns the number of rows removed."""
        targets = set(check_sha256s(sha256s))
        removed = 0
        if not targets:
            return 0
        with self._locked():
            keys, srcs = self._read_sources()
            derived = {k for k, s in zip(keys, srcs) if s in targets}
            if derived:
                left = [(k, s) for k, s in zip(keys, srcs) if k not in derived]
                self._write_sources([k for k, _ in left], [s for _, s in left])
                targets |= derived
            for p in sorted(self.dir.glob(FILE_GLOB)):
                meta, shas, emb = self._read(p)
                keep = [i for i, s in enumerate(shas) if s not in targets]
                if len(keep) == len(shas):
                    continue
                removed += len(shas) - len(keep)
                self._write(p, meta, [shas[i] for i in keep], emb.reshape(len(shas), -1)[keep])
                log.info("teacher cache %s: erased %d row(s)", p.name, len(shas) - len(keep))
        return removed

    # ----------------------------------------------------------------- compute
    def get_or_compute(self, teacher: Teacher, aligner_version: str, sha256s: Sequence[str],
                       crops_provider: CropsProvider | None, *, workers: int = 2, progress: Progress | None = None,
                       chunk_size: int = 32, flush_every: int = 2048, threads_per_worker: int = 1,
                       mp_context: str | None = None) -> np.ndarray:
        """Teacher embeddings of the images ``sha256s``, computing and caching only the missing ones.

        Args:
            teacher: a model teacher (a ``precomputed`` one is looked up directly, nothing is cached).
            aligner_version: ``FaceAligner.version`` of the aligner that makes the crops.
            sha256s: image sha256 hex digests (duplicates allowed).
            crops_provider: ``f(sha256s) -> uint8 (n, 112, 112, 3)`` RGB aligned crops in the same order. With
                ``workers > 1`` it runs in the worker processes: under the default ``fork`` start method it is
                inherited (may hold unpicklable objects, e.g. an OpenCV detector); under ``spawn`` it is pickled.
            workers: processes; <= 1 computes in this process with ``teacher`` itself.
            progress: ``progress(done, total)`` after the cache is read and after each chunk.
            chunk_size: images per task.
            flush_every: merge new rows into the file every this many rows (work survives a crash).
            threads_per_worker: ``cv2.setNumThreads`` in each worker.
            mp_context: ``"fork"`` (default where available), ``"spawn"`` or ``"forkserver"``.
        Returns:
            float32 (len(sha256s), D), unit rows, in the order of ``sha256s``.
        Raises:
            DataError: a sha256 is invalid, the provider returned wrong crops, or a cache file is corrupt.
            ConfigError: bad arguments (e.g. an unpicklable provider under ``spawn``).
            ModelArtifactError: a worker built a teacher of a different version, or a model failed.
        """
        shas = check_sha256s(sha256s)
        if not teacher.needs_crops:
            out = teacher.embed_keyed(shas)
            if progress:
                progress(len(set(shas)), len(set(shas)))
            return out
        if not isinstance(aligner_version, str) or not aligner_version:
            raise ConfigError(f"aligner_version must be a non-empty string, got {aligner_version!r}")
        if chunk_size < 1 or flush_every < 1:
            raise ConfigError(f"chunk_size and flush_every must be >= 1, got {chunk_size}, {flush_every}")
        meta = self._meta(teacher, aligner_version)
        path = self.path_for(teacher, aligner_version)
        cached_shas, cached = self._load(path, meta)
        index = {s: i for i, s in enumerate(cached_shas)}
        unique = list(dict.fromkeys(shas))
        missing = [s for s in unique if s not in index]
        total, done = len(unique), len(unique) - len(missing)
        if progress:
            progress(done, total)
        new: dict[str, np.ndarray] = {}
        if missing:
            if crops_provider is None:
                raise ConfigError(f"{len(missing)} image(s) are not cached and no crops_provider was given")
            buffer: dict[str, np.ndarray] = {}
            try:
                for chunk, emb in compute_missing(teacher, missing, crops_provider, workers=workers, chunk_size=chunk_size,
                                           threads=threads_per_worker, mp_context=mp_context):
                    for s, e in zip(chunk, emb):
                        buffer[s] = new[s] = e
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                    if len(buffer) >= flush_every:
                        self._merge(path, meta, buffer)
                        buffer = {}
            except BaseException:
                try:
                    self._merge(path, meta, buffer)  # keep what was computed before the failure
                except Exception:  # pragma: no cover - the original error matters more
                    log.exception("teacher cache %s: could not save %d rows after a failure", path, len(buffer))
                raise
            self._merge(path, meta, buffer)
        out = np.empty((len(shas), teacher.embedding_dim), dtype=np.float32)
        for i, s in enumerate(shas):
            j = index.get(s)
            out[i] = cached[j] if j is not None else new[s]
        return out
