"""Faults while a gallery store is written: a full disk (simulated at every write, and a real tiny tmpfs)
and kill -9 (at every step of a delete / compaction / enrol, and at random moments).

The disk-full tests trace one successful run of an operation (every `os.write` into the store, in order),
then replay it on fresh copies of the store with a byte budget that runs out half-way through each file
the operation writes (and at its first byte): the call must raise ENOSPC naming the store, leave no
partial file behind, and leave the store exactly as it was (same manifest.json bytes) -- or, when the
budget runs out after the commit (in an automatic compaction that follows an enrol or a delete), return
normally with the new content. Either way the same handle keeps working once space is back.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from gallery_testlib import MODEL, sha, unit_rows

from indexes import GalleryStore, IndexConfig, StoreWriteError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DIM = 8
REAL_WRITE = os.write
QUERIES = unit_rows(np.random.default_rng(99), 6, DIM)


class DiskFull:
    """`os.write` stand-in: files under `root` may receive `budget` bytes in total, then ENOSPC (after a short
    write, as a real full disk does). budget=None only records the writes: (path relative to root, bytes)."""

    def __init__(self, root: Path, budget: int | None) -> None:
        self.root = str(root.resolve()) + os.sep
        self.budget = budget
        self.used = 0
        self.writes: list[tuple[str, int]] = []

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not target.startswith(self.root):
            return REAL_WRITE(fd, data)
        view = memoryview(data).cast("B")
        if self.budget is not None:
            if self.used >= self.budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[: self.budget - self.used]
        written = REAL_WRITE(fd, view)
        self.used += written
        self.writes.append((target[len(self.root):], written))
        return written

    def files(self) -> list[tuple[str, int, int]]:
        """The files written, in order: (relative path, first byte offset in the budget, bytes)."""
        out: list[tuple[str, int, int]] = []
        offset = 0
        for name, n in self.writes:
            if out and out[-1][0] == name:
                out[-1] = (name, out[-1][1], out[-1][2] + n)
            else:
                out.append((name, offset, n))
            offset += n
        return out


def rows(rng: np.random.Generator, names: list[str], tag: str, dim: int = DIM
         ) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    paths = [f"{tag}/{i}.jpg" for i in range(len(names))]
    return unit_rows(rng, len(names), dim), names, paths, [sha(p) for p in paths]


def build(path: Path, kind: str = "flat") -> GalleryStore:
    """Segments of 8, 3 and 2 rows (segment_rows=8: the last two are small; max_segments=2); "p1" is in all three."""
    config = IndexConfig(kind=kind, segment_rows=8, max_segments=2, ann_min_rows=4, recall_queries=8)
    store = GalleryStore.create(path, model_version=MODEL, embedding_dim=DIM, threshold=0.5, index=config)
    rng = np.random.default_rng(5)
    for b, names in enumerate((["p1"] * 5 + ["p0", "p2", "p3"], ["p1", "p4", "p5"], ["p1", "p6"])):
        store.enroll(*rows(rng, names, f"base{b}"), model_version=MODEL)
    assert store.info()["segment_rows"] == [8, 3, 2]
    return store


NEW = rows(np.random.default_rng(6), ["q1", "q2", "q1"], "new")
OPERATIONS: dict[str, Callable[[GalleryStore], object]] = {
    "enroll": lambda s: s.enroll(*NEW, model_version=MODEL),  # 3 small segments > 2: an automatic compaction
    "remove": lambda s: s.remove_identity("p1"),  # rewrites all three into 3 small ones: an automatic compaction
    "compact": lambda s: s.compact(),
    "set_threshold": lambda s: s.set_threshold(0.7),  # a manifest-only commit
}


def content(store: GalleryStore) -> tuple[list[tuple], np.ndarray, np.ndarray, np.ndarray, float | None]:
    meta = store.metadata()
    table = list(zip(meta["row_id"], meta["identity"], meta["image_path"], meta["image_sha256"]))
    scores, ids = store.search(QUERIES, 5, model_version=MODEL)
    return table, store.get_embeddings(meta["row_id"].to_numpy()), scores, ids, store.threshold


def assert_same(got: tuple, want: tuple) -> None:
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], atol=1e-6)
    np.testing.assert_array_equal(got[3], want[3])
    assert got[4] == want[4]


def assert_clean(path: Path) -> None:
    """Integrity holds and every file is referenced by the manifest (no partial or temp file left)."""
    store = GalleryStore(path, 5.0)  # no open(): no garbage collection before the check
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json", "LOCK"} == store._current().manifest.referenced_files()
    store.verify_integrity()


@pytest.mark.parametrize(("operation", "kind"), [("enroll", "flat"), ("remove", "flat"), ("compact", "flat"),
                                                 ("compact", "hnsw"), ("set_threshold", "flat")])
def test_disk_full_at_every_write_keeps_the_old_state(tmp_path: Path, operation: str, kind: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    op = OPERATIONS[operation]
    base = build(tmp_path / "base", kind).path
    old_manifest = (base / "manifest.json").read_bytes()
    old = content(GalleryStore.open(base))
    shutil.copytree(base, tmp_path / "trace")
    traced = GalleryStore.open(tmp_path / "trace")
    with mock.patch("os.write", DiskFull(tmp_path / "trace", None)) as recorder:
        op(traced)
    new = content(traced)
    files = recorder.files()
    manifests = [f for f in files if f[0].startswith("manifest.json.tmp-")]
    commit_end = manifests[0][1] + manifests[0][2]  # the first commit's manifest is complete from here on
    kinds = {"manifest" if name.startswith("manifest.json.tmp-") else name.rsplit(".", 1)[1] for name, _, _ in files}
    segment_files = {"npy", "parquet"} | ({"faiss"} if kind == "hnsw" else set())
    assert kinds == {"manifest"} | (set() if operation == "set_threshold" else segment_files)
    if operation in ("enroll", "remove"):  # the automatic compaction after the commit was traced too
        assert len(manifests) == 2
    budgets = sorted({b for _, start, size in files for b in (start, start + size // 2)})
    assert len(budgets) >= 2 * len(files) - 1
    outcomes = {"raised": 0, "committed": 0, "raised after a commit": 0}
    for i, budget in enumerate(budgets):
        path = tmp_path / f"run{i}"
        shutil.copytree(base, path)
        store = GalleryStore.open(path)
        caplog.clear()
        committed = budget >= commit_end and operation in ("enroll", "remove")
        with mock.patch("os.write", DiskFull(path, budget)):
            if committed:  # the enrol/delete is durable; only its follow-up compaction failed (logged)
                op(store)
            else:
                with pytest.raises(StoreWriteError, match=f"No space left on device.*{re.escape(str(path))}") as err:
                    op(store)
                assert err.value.errno == errno.ENOSPC
        assert_clean(path)  # before any reopen: the failed write removed its own files
        if committed:
            assert "automatic compaction" in caplog.text
            assert_same(content(GalleryStore.open(path)), new)
        elif operation == "compact" and budget >= commit_end:  # failed after the merge commit: same content
            assert "was committed before the failure" in str(err.value)
            assert_same(content(GalleryStore.open(path)), old)
            outcomes["raised after a commit"] += 1
        else:
            assert "unchanged" in str(err.value)
            assert (path / "manifest.json").read_bytes() == old_manifest
            assert_same(content(GalleryStore.open(path)), old)
            assert_same(content(store), old)  # the handle that failed still serves the old state
        outcomes["committed" if committed else "raised"] += 1
        op(store)  # space is back: the same handle writes again
        assert_same(content(store), new)
        assert_clean(path)
        shutil.rmtree(path)
    assert outcomes["raised"] >= 2 and (outcomes["committed"] >= 2) == (operation in ("enroll", "remove")), outcomes
    assert (outcomes["raised after a commit"] >= 2) == (kind == "hnsw"), outcomes  # ANN build + recall commits


def test_enospc_from_fsync_or_rename_before_the_commit_keeps_the_old_state(tmp_path: Path) -> None:
    base = build(tmp_path / "base").path
    old_manifest = (base / "manifest.json").read_bytes()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync_full(fd: int) -> None:  # e.g. delayed allocation on a thin volume: the data cannot be placed
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".npy"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def replace_full(src: str, dst: str) -> None:  # the directory needs a new block for the entry
        if str(dst).endswith("manifest.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    for i, (name, fault) in enumerate((("os.fsync", fsync_full), ("os.replace", replace_full))):
        path = tmp_path / f"run{i}"
        shutil.copytree(base, path)
        store = GalleryStore.open(path)
        for operation in ("enroll", "remove", "compact"):
            with mock.patch(name, fault), pytest.raises(StoreWriteError, match="unchanged"):
                OPERATIONS[operation](store)
            assert (path / "manifest.json").read_bytes() == old_manifest
            assert_clean(path)
        OPERATIONS["remove"](store)
        assert "p1" not in GalleryStore.open(path).identities()


def test_the_cli_reports_disk_full_and_a_same_size_edit_without_a_traceback(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    path = build(tmp_path / "g").path
    with mock.patch("os.write", DiskFull(path, 0)):
        assert main(["remove", "--index", str(path), "--identity", "p1"]) == 2
    err = capsys.readouterr().err
    assert "facepipe remove: error: [Errno 28] No space left on device" in err and "unchanged" in err
    assert "Traceback" not in err and "p1" in GalleryStore.open(path).identities()
    vectors = path / next(n for n in GalleryStore.open(path)._current().manifest.referenced_files() if n.endswith("npy"))
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0x01  # one bit of one embedding: same size, valid header -- open() cannot tell
    vectors.write_bytes(bytes(data))
    assert main(["info", str(path)]) == 0
    assert main(["info", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"{vectors.name} has sha256" in err and "restore the store directory from a backup" in err


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False,
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")


def test_a_really_full_filesystem_keeps_the_store_usable(tmp_path: Path) -> None:
    """A 1 MiB tmpfs: enrol until the disk is full; every failed enrol leaves the previous state, reads go on,
    and deleting an identity frees space for the next enrol."""
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "1m")
    try:
        store = GalleryStore.create(mount / "g", model_version=MODEL, embedding_dim=256,
                                    index=IndexConfig(segment_rows=256, max_segments=64))
        rng = np.random.default_rng(0)
        before, failures = None, 0
        for b in range(40):
            emb, names, paths, shas = rows(rng, [f"id{b}"] * 64, f"batch{b}", 256)
            before = json.loads((mount / "g" / "manifest.json").read_text())
            try:
                store.enroll(emb, names, paths, shas, model_version=MODEL)
            except StoreWriteError as exc:
                assert exc.errno == errno.ENOSPC and "unchanged" in str(exc)
                failures += 1
                break
        assert failures == 1 and b > 2, "the 1 MiB file system never filled up"
        assert json.loads((mount / "g" / "manifest.json").read_text()) == before
        assert_clean(mount / "g")
        reopened = GalleryStore.open(mount / "g")
        assert len(reopened) == 64 * b and reopened.identities() == sorted(f"id{i}" for i in range(b))
        _, top = reopened.search(reopened.get_embeddings([0, 64]), 1, model_version=MODEL)
        assert top[:, 0].tolist() == [0, 64]
        assert store.remove_identity("id0") == 64  # frees a whole segment: needs only a manifest write
        store.enroll(emb[:8], names[:8], paths[:8], shas[:8], model_version=MODEL)
        assert len(GalleryStore.open(mount / "g")) == 64 * (b - 1) + 8
        assert_clean(mount / "g")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _worker(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), str(REPO / "tests")])}
    result = subprocess.run([sys.executable, str(HERE / "gallery_fault_workers.py"), *args], env=env,
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(("operation", "min_steps"), [("remove", 40), ("compact", 15), ("enroll", 25)])
def test_kill_9_at_every_step_leaves_the_old_or_the_new_state(tmp_path: Path, operation: str, min_steps: int) -> None:
    """SIGKILL before each file-changing system call of the operation in turn (see gallery_fault_workers.py)."""
    out = _worker("kill-steps", str(tmp_path), operation)
    assert out["steps"] >= min_steps, out
    assert out["old"] + out["new"] == out["steps"] == out["committed"] + out["uncommitted"], out
    assert out["committed"] > 0 and out["uncommitted"] > 0, out  # kills landed on both sides of the commit
    if operation == "compact":
        assert out["new"] == 0, out  # a compaction never changes the content, committed or not
    else:
        assert out["new"] == out["committed"], out  # the new content exactly when the manifest was replaced


def test_kill_9_at_random_moments_of_deletes_and_compactions(tmp_path: Path) -> None:
    out = _worker("random-kills", str(tmp_path), "30", "20260601")
    assert out["kills"] == 30 and sum(out["landed"].values()) == 30, out
    assert out["inside"]["remove"] >= 5 and out["inside"]["compact"] >= 5, out
    assert out["landed"]["old"] > 0 and out["completed_writes"] > 0, out
