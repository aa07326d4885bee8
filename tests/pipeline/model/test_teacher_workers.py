"""The teacher cache's worker processes: parallel equals in-process, errors come back (also under tblib's
exception pickling, as in any process that imported dask), forked workers after OpenCV's thread pool ran."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from teacher_testlib import (
    CountingTeacher,
    Provider,
    _BadSpecTeacher,
    _LockedError,
    _sha,
)

from pipeline.core.errors import ConfigError, DataError, ImageError
from pipeline.model.teachers import TeacherCache


def test_cache_parallel_workers_match_in_process(tmp_path):
    calls = tmp_path / "calls.txt"
    shas = [_sha(i) for i in range(40)]
    serial = TeacherCache(tmp_path / "c1").get_or_compute(CountingTeacher(), "v1", shas, Provider(tmp_path / "a"),
                                                          workers=1)
    seen: list[tuple[int, int]] = []
    par = TeacherCache(tmp_path / "c2").get_or_compute(CountingTeacher(calls_file=str(calls)), "v1", shas,
                                                       Provider(tmp_path / "b"), workers=2, chunk_size=5,
                                                       progress=lambda d, n: seen.append((d, n)))
    np.testing.assert_allclose(par, serial, atol=1e-6)
    pids = {line.split()[0] for line in calls.read_text().splitlines()}
    assert str(os.getpid()) not in pids and len(pids) >= 1
    assert seen[-1] == (40, 40) and len(seen) == 1 + 8


def test_cache_spawn_needs_a_picklable_provider(tmp_path):
    shas = [_sha(i) for i in range(6)]
    with pytest.raises(ConfigError, match="cannot be pickled"):
        TeacherCache(tmp_path).get_or_compute(CountingTeacher(), "v1", shas, lambda s: None, workers=2,
                                              chunk_size=2, mp_context="spawn")


def test_cache_worker_errors_come_back(tmp_path):
    """A teacher that cannot be rebuilt in a worker, or a provider error there, surfaces as the original error."""
    shas = [_sha(i) for i in range(8)]
    with pytest.raises(ConfigError, match="bad options for teacher 'counting'"):
        TeacherCache(tmp_path / "a").get_or_compute(_BadSpecTeacher(), "v1", shas, Provider(tmp_path / "p"),
                                                    workers=2, chunk_size=2)

    def failing(chunk):
        raise ImageError("some/file.jpg", "truncated JPEG")

    with pytest.raises(ImageError, match="some/file.jpg: truncated JPEG") as info:
        TeacherCache(tmp_path / "b").get_or_compute(CountingTeacher(), "v1", shas, failing, workers=2, chunk_size=2)
    assert (info.value.path, info.value.reason) == ("some/file.jpg", "truncated JPEG")

    def unpicklable(chunk):
        raise _LockedError("provider lost its handle")  # holds a lock: cannot travel back as itself

    with pytest.raises(DataError, match="_LockedError: provider lost its handle"):
        TeacherCache(tmp_path / "c").get_or_compute(CountingTeacher(), "v1", shas, unpicklable, workers=2,
                                                    chunk_size=2)


def test_image_error_pickles_as_itself():
    err = pickle.loads(pickle.dumps(ImageError("a/b.jpg", "not an image")))
    assert type(err) is ImageError and (err.path, err.reason, str(err)) == ("a/b.jpg", "not an image",
                                                                            "a/b.jpg: not an image")


_FORK_AFTER_CV2 = """
import sys, cv2, numpy as np
sys.path.insert(0, {here!r})
import teacher_testlib as t
from pipeline.core.errors import DataError
from pipeline.model.teachers import TeacherCache
cv2.setNumThreads(2)
img = np.random.rand(2000, 2000, 3).astype(np.float32)
for _ in range(3):
    cv2.GaussianBlur(img, (31, 31), 5)  # the parent's OpenCV thread pool is running
shas = [t._sha(i) for i in range(12)]
out = TeacherCache({root!r}).get_or_compute(t.CountingTeacher(), "v1", shas, t.Provider({log!r}), workers=2,
                                              chunk_size=3, threads_per_worker=1, mp_context="fork")
print(out.shape, cv2.getNumThreads())
"""


def test_cache_fork_workers_after_opencv_threads_ran(tmp_path):
    """Forked workers of a process whose OpenCV pool has run finish (resizing the pool in the child hung forever),
    and the parent gets its thread count back."""
    code = _FORK_AFTER_CV2.format(here=str(Path(__file__).parent), root=str(tmp_path / "c"), log=str(tmp_path / "l"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung workers too
        proc.communicate()
        pytest.fail("forked teacher workers hung")
    assert proc.returncode == 0, err[-2000:]
    assert out.split() == ["(12,", "8)", "2"]


_ERRORS_WITH_TBLIB = """
import sys
sys.path.insert(0, {here!r})
import pytest
import teacher_testlib as t
from pipeline.core.errors import DataError
from pipeline.model.teachers import TeacherCache
from tblib import pickling_support
pickling_support.install()  # as dask and distributed do when imported: exceptions then pickle their __context__
shas = [t._sha(i) for i in range(8)]

def unpicklable(chunk):
    raise t._LockedError("provider lost its handle")

with pytest.raises(DataError, match="_LockedError: provider lost its handle"):
    TeacherCache({root!r}).get_or_compute(t.CountingTeacher(), "v1", shas, unpicklable, workers=2, chunk_size=2)
print("ok")
"""


def test_cache_worker_errors_come_back_with_tblib_pickling(tmp_path):
    """With tblib's exception pickling installed (any process that imported dask), an unpicklable provider error
    still comes back as one DataError instead of killing the worker pool."""
    code = _ERRORS_WITH_TBLIB.format(here=str(Path(__file__).parent), root=str(tmp_path / "c"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stderr[-2000:]
