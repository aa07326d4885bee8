"""Subprocess workers for the kill -9 tests of test_gallery_faults.py (run as scripts, not collected by pytest).

    python gallery_fault_workers.py kill-steps WORKDIR OPERATION   # OPERATION: remove | compact | enroll
    python gallery_fault_workers.py random-kills WORKDIR KILLS SEED

kill-steps: builds a store, then for step = 1, 2, ... runs OPERATION on a fresh copy of it in a forkserver
child that SIGKILLs itself just before its step-th file-changing system call (os.open with O_CREAT, write,
fsync, replace, rename, unlink), until the operation completes without reaching the step. After every
kill the store is checked (`gallery_workers.check`: state old or new, embeddings, counts, no orphan,
every sha256) and the operation is run again on it, which must give the new state.

random-kills: a forkserver child deletes identities and compacts (only when there is something to
merge) forever, re-enrolling when few identities are left, logging PENDING/DONE like `gallery_workers.child`; the parent waits until a
delete or a compaction (alternately) has started, SIGKILLs the child 0-30 ms later, checks the store
and starts a new child on it.
Both print one JSON line with what happened; the test asserts on it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gallery_workers as gw
import killsteps
import numpy as np

from indexes import GalleryStore, IndexConfig

CHANGES = ("write", "fsync", "replace", "rename", "unlink", "open")


def enroll_pairs(store: GalleryStore, pairs: list[tuple[str, str]]) -> None:
    store.enroll(np.stack([gw.vector_for(s) for _, s in pairs]), [n for n, _ in pairs],
                 [f"{s[:8]}.jpg" for _, s in pairs], [s for _, s in pairs], model_version=gw.MODEL)


def base_store(path: Path) -> GalleryStore:
    """Segments of 12, 5 and 3 rows (segment_rows=12, max_segments=2); "person1" is in all three."""
    store = GalleryStore.create(path, model_version=gw.MODEL, embedding_dim=gw.DIM,
                                index=IndexConfig(segment_rows=12, max_segments=2))
    for b, names in enumerate([[1] * 7 + [2, 3, 4, 5, 6], [1, 7, 7, 8, 9], [1, 9, 0]]):
        enroll_pairs(store, [(f"person{n}", hashlib.sha256(f"base-{b}-{i}".encode()).hexdigest())
                             for i, n in enumerate(names)])
    return store


OPERATIONS: dict[str, Callable[[GalleryStore], object]] = {
    "remove": lambda s: s.remove_identity("person1"),  # rewrites 3 segments, then an automatic compaction
    "compact": lambda s: s.compact(),
    "enroll": lambda s: enroll_pairs(s, [("person3", hashlib.sha256(b"n0").hexdigest()),
                                         ("person10", hashlib.sha256(b"n1").hexdigest())]),  # + auto compaction
}


def kill_at(step: int) -> None:
    killsteps.kill_at(step, CHANGES)


def step_child(store_dir: str, operation: str, step: int) -> None:
    store = GalleryStore.open(store_dir)
    kill_at(step)
    OPERATIONS[operation](store)


def kill_steps(workdir: Path, operation: str) -> dict:
    base = base_store(workdir / "base").path
    old = gw.digest(gw.state_of(GalleryStore.open(base)))
    old_generation = GalleryStore.open(base).info()["generation"]
    shutil.copytree(base, workdir / "reference")
    OPERATIONS[operation](reference := GalleryStore.open(workdir / "reference"))
    new = gw.digest(gw.state_of(reference))
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["indexes", "gallery_workers", "gallery_fault_workers"])
    out = {"operation": operation, "steps": 0, "old": 0, "new": 0, "committed": 0, "uncommitted": 0}
    for step in range(1, 1000):
        run = workdir / f"step{step}"
        shutil.copytree(base, run)
        proc = ctx.Process(target=step_child, args=(str(run), operation, step))
        proc.start()
        proc.join()
        if proc.exitcode == 0:  # the operation finished before reaching this step
            shutil.rmtree(run)
            break
        assert proc.exitcode == -signal.SIGKILL, f"step {step}: child exited with {proc.exitcode}"
        log = workdir / f"step{step}.log"
        log.write_text(f"START {old}\nPENDING {new}\n")
        got, _ = gw.check(run, log)  # raises AssertionError on any inconsistency
        out["steps"] = step
        out["new" if got == new != old else "old"] += 1
        generation = GalleryStore.open(run).info()["generation"]
        out["committed" if generation > old_generation else "uncommitted"] += 1
        OPERATIONS[operation](GalleryStore.open(run, lock_timeout_s=5))  # the lock is free, the next write works
        assert gw.digest(gw.state_of(GalleryStore.open(run))) == new, f"step {step}: re-running did not give the new state"
        shutil.rmtree(run)
    return out


def churn_child(store_dir: str, log_path: str, seed: int) -> None:
    rng = random.Random(seed)
    store = GalleryStore.open(store_dir)
    state = gw.state_of(store)
    with open(log_path, "a", buffering=1) as log:
        log.write(f"START {gw.digest(state)}\n")
        for i in range(10**9):
            names = sorted({name for name, _ in state})
            if len(names) < 5:
                pairs = [(f"person{rng.randrange(12)}", hashlib.sha256(f"{seed}-{i}-{j}".encode()).hexdigest())
                         for j in range(12)]
                log.write(f"PENDING {gw.digest(state | set(pairs))} enroll\n")
                enroll_pairs(store, pairs)
                state |= set(pairs)
            elif rng.random() < 0.5 or sum(r < 12 for r in store.info()["segment_rows"]) < 2:  # compact needs work
                victim = rng.choice(names)
                after = {p for p in state if p[0] != victim}
                log.write(f"PENDING {gw.digest(after)} remove\n")
                store.remove_identity(victim)
                state = after
            else:
                log.write(f"PENDING {gw.digest(state)} compact\n")
                store.compact()
            log.write(f"DONE {gw.digest(state)}\n")


def _last_line(path: Path) -> str:
    lines = path.read_text().splitlines() if path.exists() else []
    return lines[-1] if lines else ""


def random_kills(workdir: Path, kills: int, seed: int) -> dict:
    store_dir = base_store(workdir / "g").path
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["indexes", "gallery_workers", "gallery_fault_workers"])
    rng = random.Random(seed)
    log_path = workdir / "churn.log"
    inside = {"remove": 0, "compact": 0, "enroll": 0, "between": 0}
    landed = {"old": 0, "new": 0, "idle": 0}
    for i in range(kills):
        target = ("remove", "compact")[i % 2]
        proc = ctx.Process(target=churn_child, args=(str(store_dir), str(log_path), seed + i))
        proc.start()
        deadline = time.monotonic() + 30
        while not _last_line(log_path).endswith(f" {target}") and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.03))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        last = _last_line(log_path).split()
        inside[last[2] if last[0] == "PENDING" else "between"] += 1
        _, where = gw.check(store_dir, log_path)
        landed[where] += 1
    done = sum(line.startswith("DONE") for line in log_path.read_text().splitlines())
    return {"kills": kills, "inside": inside, "landed": landed, "completed_writes": done}


def main(argv: list[str]) -> None:
    command, workdir = argv[0], Path(argv[1])
    if command == "kill-steps":
        print(json.dumps(kill_steps(workdir, argv[2])))
    elif command == "random-kills":
        print(json.dumps(random_kills(workdir, int(argv[2]), int(argv[3]))))
    else:
        raise SystemExit(f"unknown command {command!r}")
    # Every check has run and the summary is printed. Skip interpreter teardown: a native thread pool torn down at
    # exit can abort the process after the work is done (apache/arrow#34314; seen in CI here too, exit -6).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    import gallery_fault_workers  # run the functions from the importable module: forkserver children pickle them

    gallery_fault_workers.main(sys.argv[1:])
