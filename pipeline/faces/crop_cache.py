"""Aligned face crops cached on disk, keyed by (image sha256, aligner version): training data is aligned once.

One Parquet file per aligner version in the cache folder (``aligned-<hash of the version>.parquet``), its
version in the file's metadata; rows hold the outcome of aligning one image in query mode (accepted or not,
the raw RGB crop bytes, faces found, quality, flags, reject reason). Writers merge under a file lock and
replace the file atomically; `erase` removes images (data-protection erasure).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.core.io import FileLock, write_parquet_atomic
from pipeline.faces.outcome import FaceOutcome

log = logging.getLogger(__name__)

LOCK_NAME = ".aligned-cache.lock"
VERSION_KEY = b"facepipe.aligner_version"


class AlignedCropCache:
    """Aligned crops of images in ``cache_dir`` (created if missing); reads are memoised per process."""

    def __init__(self, cache_dir: str | os.PathLike[str], *, lock_timeout_s: float = 600.0) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock_timeout_s = lock_timeout_s
        self._memo: dict[str, tuple[float, dict[str, FaceOutcome]]] = {}

    def path_for(self, aligner_version: str) -> Path:
        return self.dir / f"aligned-{hashlib.sha256(aligner_version.encode()).hexdigest()[:20]}.parquet"

    def _read(self, aligner_version: str) -> dict[str, FaceOutcome]:
        path = self.path_for(aligner_version)
        if not path.is_file():
            return {}
        mtime = path.stat().st_mtime
        memo = self._memo.get(aligner_version)
        if memo is not None and memo[0] == mtime:
            return memo[1]
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"aligned-crop cache {path} is unreadable ({exc}); delete it to rebuild") from exc
        if (table.schema.metadata or {}).get(VERSION_KEY, b"").decode() != aligner_version:
            raise DataError(f"aligned-crop cache {path} belongs to another aligner version; delete it to rebuild")
        out = {}
        for row in table.to_pylist():
            crop = None
            if row["crop"] is not None:
                px = int(row["crop_px"])
                crop = np.frombuffer(row["crop"], dtype=np.uint8).reshape(px, px, 3)
            out[row["image_sha256"]] = FaceOutcome(
                bool(row["accepted"]), crop, None, json.loads(row["quality"]), int(row["faces_found"]), "query",
                row["reject_code"], row["reject_reason"], tuple(f for f in row["flags"].split(",") if f))
        self._memo[aligner_version] = (mtime, out)
        return out

    def get(self, aligner_version: str, sha256s: Iterable[str]) -> dict[str, FaceOutcome]:
        """The cached outcomes among ``sha256s``."""
        cached = self._read(aligner_version)
        return {s: cached[s] for s in sha256s if s in cached}

    def put(self, aligner_version: str, outcomes: Mapping[str, FaceOutcome]) -> None:
        """Merge new outcomes into the cache file (atomic; concurrent writers serialise on the lock)."""
        if not outcomes:
            return
        with FileLock(self.dir / LOCK_NAME, self.lock_timeout_s, what=f"the aligned-crop cache {self.dir}"):
            merged = {**self._read(aligner_version), **outcomes}
            self._write(aligner_version, merged)
        log.info("aligned-crop cache: %d new, %d in total", len(outcomes), len(merged))

    def erase(self, sha256s: Iterable[str]) -> int:
        """Remove these images from every aligner version's file; returns the rows removed."""
        drop, removed = set(sha256s), 0
        with FileLock(self.dir / LOCK_NAME, self.lock_timeout_s, what=f"the aligned-crop cache {self.dir}"):
            for path in sorted(self.dir.glob("aligned-*.parquet")):
                version = (pq.read_schema(path).metadata or {}).get(VERSION_KEY, b"").decode()
                rows = self._read(version)
                keep = {s: o for s, o in rows.items() if s not in drop}
                if len(keep) != len(rows):
                    removed += len(rows) - len(keep)
                    self._write(version, keep)
        return removed

    def _write(self, aligner_version: str, outcomes: Mapping[str, FaceOutcome]) -> None:
        shas = sorted(outcomes)
        os_ = [outcomes[s] for s in shas]
        table = pa.table({
            "image_sha256": pa.array(shas, pa.string()),
            "accepted": pa.array([o.accepted for o in os_], pa.bool_()),
            "crop": pa.array([None if o.crop is None else np.ascontiguousarray(o.crop).tobytes() for o in os_],
                             pa.binary()),
            "crop_px": pa.array([0 if o.crop is None else int(o.crop.shape[0]) for o in os_], pa.int32()),
            "faces_found": pa.array([int(o.faces_found) for o in os_], pa.int32()),
            "quality": pa.array([json.dumps(o.quality, sort_keys=True) for o in os_], pa.string()),
            "reject_code": pa.array([o.reject_code for o in os_], pa.string()),
            "reject_reason": pa.array([o.reject_reason for o in os_], pa.string()),
            "flags": pa.array([",".join(o.flags) for o in os_], pa.string()),
        }).replace_schema_metadata({VERSION_KEY: aligner_version.encode()})
        path = self.path_for(aligner_version)
        write_parquet_atomic(table, path)
        self._memo[aligner_version] = (path.stat().st_mtime, dict(outcomes))
