"""Durable file writes, file digests and the file lock: the one implementation every layer uses.

`indexes` is the bottom layer and imports nothing of the project, so these primitives live here and
`pipeline.core.io` builds on them (atomic JSON/Parquet/path writes) instead of keeping a second copy.

Commit protocol used by the store (see `indexes.store`):
1. new immutable files are written under fresh unique names (`write_new_file`: O_EXCL, write, fsync),
2. their directory is fsynced,
3. `manifest.json` is replaced atomically (`write_file_atomic`: temp file, fsync, `os.replace`,
   fsync of the directory) -- this rename is the single commit point,
4. files no longer referenced are unlinked and the directory fsynced again.
A process killed anywhere leaves either the old manifest (new files are unreferenced orphans) or
the new one (old files are orphans); orphans are removed by the next holder of the writer lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from indexes.errors import StoreLocked

logger = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 8 << 20  # chunks larger than this are hashed in a second thread while written


@dataclass(frozen=True)
class WrittenFile:
    """Size and sha256 (hex) of a file as written."""

    size: int
    sha256: str


def fsync_dir(path: Path) -> None:
    """fsync a directory so that creations, renames and unlinks inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Iterable[bytes | memoryview]) -> WrittenFile:
    # hashing runs in a second thread while this one writes (both release the GIL on large buffers)
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        hasher = threading.Thread(target=digest.update, args=(view,)) if view.nbytes > _HASH_CHUNK_BYTES else None
        if hasher is not None:
            hasher.start()
        else:
            digest.update(view)
        size += view.nbytes
        try:
            while view.nbytes:
                written = os.write(fd, view[: 1 << 30])
                view = view[written:]
        finally:
            if hasher is not None:
                hasher.join()
    os.fsync(fd)
    return WrittenFile(size=size, sha256=digest.hexdigest())


def write_new_file(path: Path, chunks: Iterable[bytes | memoryview]) -> WrittenFile:
    """Create `path` (which must not exist), write `chunks` in order, fsync it.

    The caller fsyncs the directory (once per batch of new files) before committing.
    A partial file left by a crash is never referenced by a manifest and is garbage-collected.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        return _write_all(fd, chunks)
    except BaseException:
        os.close(fd)
        fd = -1
        path.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def temp_name(path: Path) -> Path:
    """A unique sibling temp name: `<name>.tmp-<hex>` (garbage-collected if a crash strands it)."""
    return path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = temp_name(path)
    write_new_file(tmp, [data])
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (``hashlib.file_digest``: chunked, GIL released)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class FileLock:
    """A lock file taken with `fcntl.flock`, exclusive (writers) or shared (readers that must not see a
    write happen meanwhile), polled until `timeout_s`; raises `StoreLocked` (or ``what``'s message) after.

    flock locks belong to the open file description, so two threads of one process (each entering
    its own `FileLock`) exclude each other just like two processes. The kernel drops the lock when
    the holder dies, so a killed writer never leaves the file locked.
    """

    def __init__(self, path: Path, timeout_s: float, *, shared: bool = False, poll_s: float = 0.01,
                 what: str = "this store") -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.shared = shared
        self.poll_s = poll_s
        self.what = what
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; True on success."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Take the lock, waiting up to `timeout_s`; raises `StoreLocked` after that."""
        deadline = time.monotonic() + self.timeout_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise StoreLocked(
                    f"could not take the lock {self.path} within {self.timeout_s:.1f} s: another "
                    f"process is writing to {self.what}; retry later or pass a longer lock_timeout_s"
                )
            time.sleep(self.poll_s)

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


StoreLock = FileLock  # the store's exclusive writer lock
