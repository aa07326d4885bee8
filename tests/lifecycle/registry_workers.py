"""Subprocess worker for test_registry_faults.py (run as a script, not collected by pytest).

    python registry_workers.py kill-steps WORKDIR OPERATIONS   # comma-separated: switch,rollback,register

Builds a registry (pair A live; model B and its gallery store registered, not live; for `rollback`, B
is live with A on the rollback stack), then for step = 1, 2, ... runs OPERATION on a fresh copy in a
forkserver child that SIGKILLs itself just before its step-th file-changing system call (os.open with
O_CREAT, write, fsync, replace, rename, unlink, mkdir, sendfile) -- the switch's catch-up hook enrols
one late image into B's store, so its steps count too -- until the operation completes without
reaching the step. After every kill the parent checks that CURRENT.json holds exactly the old or the
new pair, that every pair on it loads (model.json checks, weights sha256, gallery store integrity),
that no version is listed without its complete model files, that the lock is free, and that running
the operation again (when it did not happen) gives the new pair. Prints one JSON line of counts per
operation ("lagging_log": kills after the commit but before events.jsonl / the entry's promoted_at were
written; "temp_files_left": hidden .*.tmp files of interrupted atomic writes, never read).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import killsteps
import numpy as np
from test_registry import fake_model

from indexes import GalleryStore
from lifecycle.registry import ModelRegistry, Pair
from pipeline.model.artifacts import read_model_meta

CHANGES = ("write", "fsync", "replace", "rename", "unlink", "open", "mkdir", "sendfile")
DIM = 32  # fake_model's embedding_dim
LATE = hashlib.sha256(b"late image").hexdigest()


def unit(seed: int, n: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_store(reg: ModelRegistry, version: str, seed: int) -> str:
    staged = reg.new_staging("store")
    store = GalleryStore.create(staged, model_version=version, embedding_dim=DIM)
    shas = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(3)]
    store.enroll(unit(seed, 3), ["ann", "bob", "cat"], [f"{s[:6]}.jpg" for s in shas], shas, model_version=version)
    return reg.add_store(staged, version)


def catch_up(reg: ModelRegistry, new: Pair) -> None:
    """The switch hook: enrol an image that reached the old store while the new one was built (idempotent)."""
    store = GalleryStore.open(reg.store_dir(new.store))
    store.enroll(unit(99, 1), ["dan"], ["late.jpg"], [LATE], model_version=new.model_version)


EVENT = {"switch": "promote", "rollback": "rollback", "register": "register"}  # what each logs in events.jsonl
OPERATIONS: dict[str, Callable[[ModelRegistry, dict], object]] = {
    "switch": lambda reg, t: reg.switch(t["b"][0], t["b"][1], reason="kill test",
                                        before_commit=lambda old, new: catch_up(reg, new)),
    "rollback": lambda reg, t: reg.rollback(reason="kill test"),
    "register": lambda reg, t: reg.register_model(t["c_dir"]),
}


def template(root: Path, operation: str) -> dict:
    reg = ModelRegistry.open(root / "template", create=True)
    a = reg.register_model(fake_model(root, 1))
    reg.switch(a, store_a := build_store(reg, a, 1), reason="first")
    b = reg.register_model(fake_model(root, 2))
    store_b = build_store(reg, b, 2)
    if operation == "rollback":
        reg.switch(b, store_b, reason="second")
    c_dir = fake_model(root, 3)
    old, new = {"switch": ((a, store_a), (b, store_b)), "rollback": ((b, store_b), (a, store_a)),
                "register": ((a, store_a), (a, store_a))}[operation]
    return {"root": reg.root, "b": (b, store_b), "events": [e["event"] for e in reg.events()].count(EVENT[operation]), "c_dir": str(c_dir), "c": read_model_meta(c_dir)["model_version"],
            "old": old, "new": new}


def kill_at(step: int) -> None:
    killsteps.kill_at(step, CHANGES)


def step_child(run: str, operation: str, t: dict, step: int) -> None:
    reg = ModelRegistry.open(run)
    kill_at(step)
    OPERATIONS[operation](reg, t)


def check_model(reg: ModelRegistry, version: str) -> None:
    meta = read_model_meta(reg.model_dir(version))
    weights = hashlib.sha256((reg.model_dir(version) / "model.safetensors").read_bytes()).hexdigest()
    assert weights == meta["weights_sha256"], f"{version}: weights do not match model.json"


def check(run: Path, operation: str, t: dict) -> dict:
    reg = ModelRegistry.open(run, lock_timeout_s=2)
    ptr = reg.pointer()
    live = (ptr.current.model_version, ptr.current.store)
    assert live in (t["old"], t["new"]), f"live pair {live} is neither {t['old']} nor {t['new']}"
    for pair in (ptr.current, *ptr.previous):  # every pair a rollback could bring back
        check_model(reg, pair.model_version)
        GalleryStore.open(reg.store_dir(pair.store), model_version=pair.model_version).verify_integrity()
    for entry in reg.versions():  # a listed version is complete (never a half-copied model)
        if entry["status"] != "retired":
            check_model(reg, entry["model_version"])
    fd = os.open(run / "LOCK", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the killed process left it locked
    os.close(fd)
    listed = t["c"] in {e["model_version"] for e in reg.versions()}
    new = live == t["new"] != t["old"] or operation == "register" and listed
    logged = [e["event"] for e in reg.events()].count(EVENT[operation]) > t["events"]
    if operation == "switch" and new:
        logged = logged and "promoted_at" in reg.entry(t["b"][0])
    result = {"new": new, "lagging_log": new and not logged, "temp_files": len(list(run.rglob(".*.tmp"))), "repaired": 0}
    own_tmp = [*run.glob(".*.tmp"), *run.glob("entries/.*.tmp")]  # the registry's own atomic writes
    repaired = reg.repair()  # what every exclusive lock does first: the log and promoted_at catch up
    assert bool(repaired) == bool(result["lagging_log"] or own_tmp), (repaired, result, own_tmp)
    result["repaired"] = int(bool(repaired))
    assert not [*run.glob(".*.tmp"), *run.glob("entries/.*.tmp")], "temp files of the killed write are left"
    if new:
        n = [e["event"] for e in reg.events()].count(EVENT[operation])
        assert n == t["events"] + 1, f"{EVENT[operation]} logged {n - t['events']} times after repair"
        if operation == "switch":
            assert "promoted_at" in reg.entry(t["b"][0]), "promoted_at missing after repair"
    if live == t["old"] and operation != "register" or operation == "register" and not listed:
        OPERATIONS[operation](reg, t)  # the interrupted operation runs again, with the lock free
    ptr = reg.pointer()
    assert (ptr.current.model_version, ptr.current.store) == t["new"], "re-running did not give the new pair"
    if operation == "switch":
        shas = GalleryStore.open(reg.store_dir(t["b"][1])).metadata()["image_sha256"].tolist()
        assert shas.count(LATE) == 1, "the catch-up image is not in the new store exactly once"
    if operation == "register":
        check_model(reg, t["c"])
    return result


def kill_steps(workdir: Path, operation: str) -> dict:
    workdir.mkdir()
    t = template(workdir, operation)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["indexes", "lifecycle.registry", "registry_workers"])
    out = {"operation": operation, "steps": 0, "old": 0, "new": 0, "lagging_log": 0, "temp_files_left": 0, "repaired": 0}
    for step in range(1, 1000):
        run = workdir / f"step{step}"
        shutil.copytree(t["root"], run, symlinks=True)
        proc = ctx.Process(target=step_child, args=(str(run), operation, t, step))
        proc.start()
        proc.join()
        if proc.exitcode == 0:  # the operation finished before reaching this step
            break
        assert proc.exitcode == -signal.SIGKILL, f"step {step}: child exited with {proc.exitcode}"
        result = check(run, operation, t)
        out["steps"] = step
        out["new" if result["new"] else "old"] += 1
        out["lagging_log"] += result["lagging_log"]
        out["temp_files_left"] += result["temp_files"]
        out["repaired"] += result["repaired"]
        shutil.rmtree(run)
    return out


def main(argv: list[str]) -> None:
    if argv[0] != "kill-steps":
        raise SystemExit(f"unknown command {argv[0]!r}")
    print(json.dumps({op: kill_steps(Path(argv[1]) / op, op) for op in argv[2].split(",")}))


if __name__ == "__main__":
    import registry_workers  # run the functions from the importable module: forkserver children pickle them

    registry_workers.main(sys.argv[1:])
