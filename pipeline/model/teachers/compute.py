"""Computing teacher embeddings for `TeacherCache.get_or_compute`: in this process, or in worker processes that
each build their own teacher from ``teacher.spec()`` (OpenCV and dlib models cannot be pickled) and call the
crops provider themselves, so decoding and alignment run in parallel too."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError, DataError, ModelArtifactError
from pipeline.model.teachers.base import Teacher, check_crops, create_teacher

CropsProvider = Callable[[list[str]], np.ndarray]
def _embed_chunk(teacher: Teacher, chunk: list[str], provider: CropsProvider) -> np.ndarray:
    crops = provider(chunk)
    try:
        crops = check_crops(crops)
    except DataError as exc:
        raise DataError(f"crops_provider, for the chunk starting at image {chunk[0]}: {exc}") from None
    if len(crops) != len(chunk):
        raise DataError(f"crops_provider returned {len(crops)} crops for {len(chunk)} images "
                        f"(chunk starting at image {chunk[0]})")
    return teacher.embed(crops)


def compute_missing(teacher: Teacher, missing: list[str], provider: CropsProvider, *, workers: int, chunk_size: int,
             threads: int, mp_context: str | None) -> Iterator[tuple[list[str], np.ndarray]]:
    chunks = [missing[i:i + chunk_size] for i in range(0, len(missing), chunk_size)]
    if workers <= 1 or len(chunks) == 1:
        for c in chunks:
            yield c, _embed_chunk(teacher, c, provider)
        return
    method = mp_context or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    try:
        ctx = mp.get_context(method)
    except ValueError as exc:
        raise ConfigError(f"unknown multiprocessing start method {method!r}") from exc
    name, opts = teacher.spec()
    if method != "fork":
        try:
            pickle.dumps(provider)
        except Exception as exc:
            raise ConfigError(f"crops_provider cannot be pickled for {method!r} workers ({exc}); "
                              "use a module-level function or class, or mp_context='fork'") from exc
    forked = method == "fork"
    ex = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx, initializer=_worker_init,
                             initargs=(name, opts, teacher.version, provider, threads, forked))
    # OpenCV's thread pool cannot be resized in a forked child (it waits forever on the parent's threads):
    # a forked worker inherits the thread count the parent has while the workers start.
    cv2_threads = _cv2_threads(threads) if forked else None
    try:
        # keep at most 2 tasks per worker queued so a failure stops the run quickly
        todo = list(reversed(chunks))
        running = set()
        limit = 2 * min(workers, len(chunks))
        while todo or running:
            while todo and len(running) < limit:
                running.add(ex.submit(_worker_run, todo.pop()))
            if cv2_threads is not None:  # the workers exist now
                _cv2_threads(cv2_threads)
                cv2_threads = None
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                try:
                    result = f.result()
                except BrokenProcessPool as exc:
                    raise ModelArtifactError(f"a teacher worker process died ({exc}); out of memory? "
                                             "retry with fewer workers") from exc
                yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        if cv2_threads is not None:
            _cv2_threads(cv2_threads)


def _cv2_threads(n: int) -> int | None:
    """Set OpenCV's thread count (when cv2 is loaded) and return the previous one."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None:
        return None
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    return before


_WORKER: dict[str, Any] = {}


def _worker_init(name: str, opts: dict[str, Any], version: str, provider: CropsProvider, threads: int,
                 forked: bool = False) -> None:
    """Build this worker's teacher; an error is kept and raised by the first task (so its message survives)."""
    try:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if not forked:  # a forked worker has the thread count the parent set for it (see compute_missing)
            with contextlib.suppress(ImportError):
                import cv2

                cv2.setNumThreads(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        teacher = create_teacher(name, **opts)
        if teacher.version != version:
            raise ModelArtifactError(f"worker built teacher {teacher.version}, expected {version}")
        _WORKER.update(teacher=teacher, provider=provider, error=None)
    except BaseException as exc:  # noqa: BLE001 - re-raised by _worker_run
        _WORKER.update(error=exc)


def _worker_run(chunk: list[str]) -> tuple[list[str], np.ndarray]:
    try:
        if _WORKER.get("error") is not None:
            raise _WORKER["error"]
        return chunk, _embed_chunk(_WORKER["teacher"], chunk, _WORKER["provider"])
    except Exception as exc:
        portable = _portable(exc)
    raise portable  # outside the handler: a replacement carries no unpicklable __context__


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (it travels back to the parent so), else a DataError/ModelArtifactError
    with its type and message: an error that cannot unpickle (a custom ``__init__``, a lock in its attributes
    or in its ``__context__`` when tblib's pickling support is installed) would break the whole pool."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - whatever pickling raises, the replacement is plain
        kind = DataError if isinstance(exc, ValueError) else ModelArtifactError
        return kind(f"{type(exc).__name__}: {exc}")
