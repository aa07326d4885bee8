"""Subprocess workers for the durability tests (run as scripts, not collected by pytest).

    python gallery_workers.py enroll STORE PREFIX BATCHES      # concurrent-writer test
    python gallery_workers.py crash-loop STORE KILLS SEED      # kill -9 loop; exits 0 if every check held

crash-loop: a forkserver child opens the store and enrols / deletes / compacts forever, appending to a
log "PENDING <digest>" before each write and "DONE <digest>" after it (digest = sha256 of the sorted
(identity, image_sha256) pairs). The parent SIGKILLs it after a random delay, opens the store and checks
that its state is the last DONE state or the PENDING one (old or new, never a mix), that every row's
embedding is the one enrolled for its image, that counts agree, that no unreferenced file survived
garbage collection and that every file matches its sha256. It then starts a new child on the same store.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np

from indexes import GalleryStore, IndexConfig

MODEL = "model-test-v1"
DIM = 16
NAMES = [f"person{i}" for i in range(10)]


def vector_for(sha: str) -> np.ndarray:
    """The deterministic embedding enrolled for an image digest."""
    v = np.random.default_rng(int(sha[:12], 16)).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def digest(pairs) -> str:
    return hashlib.sha256("\n".join(sorted(f"{a}\t{b}" for a, b in pairs)).encode()).hexdigest()


def state_of(store: GalleryStore) -> set[tuple[str, str]]:
    meta = store.metadata()
    return set(zip(meta["identity"], meta["image_sha256"]))


def child(store_dir: str, log_path: str, seed: int) -> None:
    rng = random.Random(seed)
    store = GalleryStore.open(store_dir)
    state = state_of(store)
    with open(log_path, "a", buffering=1) as log:
        log.write(f"START {digest(state)}\n")
        while True:
            op = rng.random()
            if op < 0.6 or len(state) < 4:
                n = rng.randint(1, 4)
                names = [rng.choice(NAMES) for _ in range(n)]
                shas = [hashlib.sha256(f"{rng.random()}".encode()).hexdigest() for _ in range(n)]
                if state and rng.random() < 0.3:  # re-offer a stored image: must be reported, not stored
                    names[0], shas[0] = next(iter(state))
                known = {s for _, s in state}
                new = set()
                for name, s in zip(names, shas):
                    if s not in known:
                        known.add(s)
                        new.add((name, s))
                log.write(f"PENDING {digest(state | new)}\n")
                store.enroll(np.stack([vector_for(s) for s in shas]), names, [f"{s[:8]}.jpg" for s in shas], shas,
                             model_version=MODEL)
                state |= new
            elif op < 0.9:
                victim = rng.choice(sorted({name for name, _ in state}))
                after = {p for p in state if p[0] != victim}
                log.write(f"PENDING {digest(after)}\n")
                store.remove_identity(victim)
                state = after
            else:
                log.write(f"PENDING {digest(state)}\n")
                store.compact()
            log.write(f"DONE {digest(state)}\n")


def check(store_dir: Path, log_path: Path) -> tuple[str, str]:
    """Verify the store after a kill -> (state digest, "idle" | "old" | "new": where the kill landed)."""
    lines = log_path.read_text().splitlines()
    settled = [line.split()[1] for line in lines if line.split()[0] in ("START", "DONE")]
    allowed = {settled[-1]} if settled else set()
    if lines and lines[-1].startswith("PENDING"):
        allowed.add(lines[-1].split()[1])
    store = GalleryStore.open(store_dir)  # also garbage-collects what the killed writer left
    meta = store.metadata()
    got = digest(zip(meta["identity"], meta["image_sha256"]))
    if allowed and got not in allowed:
        raise AssertionError(f"store state {got} is neither the old nor the new state {allowed}")
    if len(meta) != len(store) or meta["row_id"].is_unique is False:
        raise AssertionError("metadata rows disagree with the manifest")
    if len(meta):
        stored = store.get_embeddings(meta["row_id"].to_numpy())
        expected = np.stack([vector_for(s) for s in meta["image_sha256"]])
        if not np.array_equal(stored, expected):
            raise AssertionError("an embedding does not belong to its metadata row")
        _, top = store.search(expected[:5], 1, model_version=MODEL)
        if not np.array_equal(top[:, 0], meta["row_id"].to_numpy()[:5]):
            raise AssertionError("search does not find a row from its own embedding")
    if store.info()["identities"] != meta["identity"].nunique():
        raise AssertionError("counts.identities disagrees with the metadata")
    manifest = store._current().manifest
    on_disk = {p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if p.is_file()}
    if on_disk - {"manifest.json", "LOCK"} != manifest.referenced_files():
        raise AssertionError(f"unreferenced files survived: {on_disk - manifest.referenced_files()}")
    store.verify_integrity()
    if not (lines and lines[-1].startswith("PENDING")):
        return got, "idle"
    return got, "new" if got == lines[-1].split()[1] and got != settled[-1] else "old"


def crash_loop(store_dir: Path, kills: int, seed: int) -> None:
    GalleryStore.create(store_dir, model_version=MODEL, embedding_dim=DIM,
                        index=IndexConfig(segment_rows=12, max_segments=3))
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["indexes", "gallery_workers"])
    rng = random.Random(seed)
    log_path = store_dir.parent / "crash.log"
    states, landed = set(), {"idle": 0, "old": 0, "new": 0}
    for i in range(kills):
        proc = ctx.Process(target=child, args=(str(store_dir), str(log_path), seed + i))
        proc.start()
        time.sleep(rng.uniform(0.02, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        state, where = check(store_dir, log_path)
        states.add(state)
        landed[where] += 1
    done = sum(line.startswith("DONE") for line in log_path.read_text().splitlines())
    print(f"{kills} kills ({landed['old']} mid-write rolled back, {landed['new']} mid-write after the commit, "
          f"{landed['idle']} between writes), {done} completed writes, {len(states)} distinct states checked")


def enroll_worker(store_dir: Path, prefix: str, batches: int) -> None:
    store = GalleryStore.open(store_dir, lock_timeout_s=60)
    (store_dir.parent / f"ready-{prefix}").touch()
    deadline = time.monotonic() + 60
    while not (store_dir.parent / "go").exists() and time.monotonic() < deadline:  # start together
        time.sleep(0.001)
    for b in range(batches):
        shas = [hashlib.sha256(f"{prefix}-{b}-{j}".encode()).hexdigest() for j in range(3)]
        store.enroll(np.stack([vector_for(s) for s in shas]), [f"{prefix}{b}"] * 3,
                     [f"{prefix}/{b}/{j}.jpg" for j in range(3)],
                     shas, model_version=MODEL)


def churn_worker(store_dir: Path, seconds: float) -> None:
    """Enrol and delete continuously for `seconds` (readers run concurrently in the test)."""
    store = GalleryStore.open(store_dir, lock_timeout_s=60)
    rng = random.Random(0)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        shas = [hashlib.sha256(f"churn-{i}-{j}".encode()).hexdigest() for j in range(3)]
        store.enroll(np.stack([vector_for(s) for s in shas]), [f"churn{i}"] * 3, [f"c/{i}/{j}.jpg" for j in range(3)],
                     shas, model_version=MODEL)
        if i % 2:
            store.remove_identity(f"churn{rng.randrange(i)}")
        i += 1


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "enroll":
        enroll_worker(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif command == "churn":
        churn_worker(Path(sys.argv[2]), float(sys.argv[3]))
    elif command == "crash-loop":
        crash_loop(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        # Every check has run and the summary is printed. Skip interpreter teardown: a native thread pool torn down
        # at exit can abort the process after the work is done (apache/arrow#34314; seen once in CI, exit -6).
        sys.stdout.flush()
        os._exit(0)
    else:
        raise SystemExit(f"unknown command {command!r}")
