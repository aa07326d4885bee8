"""Durable file I/O for every stage: atomic writes (bytes, JSON, Parquet, any file a library writes by path),
file digests, the file lock and UTC timestamps.

Invariants: every write goes to a unique temp file beside its target, is fsynced, ``os.replace``-d onto the
target, and the directory is fsynced, so after a crash a reader sees the old file or the new one, complete,
and the rename survives power loss. Temp files are named ``.<name>.<random>.tmp`` (hidden, recognisable for
clean-up by the registry's repair); a failed write removes its temp file.

The primitives (directory fsync, the flock-based lock, sha256 of a file) are `indexes.atomic`'s: `indexes`
is the bottom layer and may import nothing of `pipeline`, so this module builds on it rather than keeping a
second copy.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from indexes.atomic import FileLock, fsync_dir, sha256_file
from indexes.manifest import utc_now_iso as utc_now

__all__ = ["FileLock", "atomic_path", "file_digest", "fsync_dir", "utc_now", "write_bytes_atomic",
           "write_json_atomic", "write_parquet_atomic"]


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    return sha256_file(Path(path))


def _fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for a library that writes by file name (safetensors, Parquet);
    on a clean exit the file is fsynced, renamed onto ``path`` and the directory fsynced. On error the
    temp file is removed and ``path`` is untouched."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> None:
    """Replace ``path`` with ``value`` as indented, key-sorted UTF-8 JSON, atomically and durably."""
    write_bytes_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


def write_parquet_atomic(table: pa.Table | pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a table as Parquet atomically and durably: readers never see a half-written file."""
    t = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(t, tmp)
    return Path(path)
