"""Faults during promotion (the registry switch), rollback and registration (lifecycle/registry.py).

kill -9 at every step: see registry_workers.py (one subprocess runs all three operations, so torch is
imported once). Disk full: ENOSPC injected into the copy of a model and into the write of CURRENT.json.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_registry import fake_model, promote

from lifecycle.registry import ModelRegistry

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def kill_steps(tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), str(REPO / "tests")])}
    result = subprocess.run([sys.executable, str(HERE / "registry_workers.py"), "kill-steps",
                             str(tmp_path_factory.mktemp("kills")), "switch,rollback,register"],
                            check=False, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(("operation", "min_steps"), [("switch", 20), ("rollback", 5), ("register", 10)])
def test_kill_9_at_every_step_leaves_the_old_or_the_new_pair(kill_steps: dict, operation: str, min_steps: int) -> None:
    """After each kill: CURRENT.json is the old or the new pair, every pair on it loads, no version is listed
    without complete model files, the lock is free, and the operation then completes (checked in the worker)."""
    out = kill_steps[operation]
    assert out["steps"] >= min_steps, out
    assert out["old"] + out["new"] == out["steps"], out
    assert out["old"] > 0 and out["new"] > 0, out  # kills landed on both sides of the commit
    # kills between the commit and the bookkeeping happened, and the worker checked that repair() fixed them
    assert out["repaired"] > 0, out


def test_disk_full_while_registering_lists_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    src = fake_model(tmp_path, 1)
    real_copy = shutil.copy2

    def copy_full(a: Path, b: Path) -> None:
        if Path(a).name == "model.json":  # the weights were copied, then the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(b))
        real_copy(a, b)

    monkeypatch.setattr(shutil, "copy2", copy_full)
    with pytest.raises(OSError, match="No space left on device"):
        reg.register_model(src)
    assert reg.versions() == [] and not any((reg.root / "models").iterdir()) and reg.events() == []
    leftovers = list((reg.root / "staging").iterdir())  # work in progress: prune removes it after a day
    assert [p.name.startswith("model-") for p in leftovers] == [True]
    monkeypatch.setattr(shutil, "copy2", real_copy)
    version = reg.register_model(src)
    assert [e["model_version"] for e in reg.versions()] == [version]


def test_disk_full_while_writing_current_json_keeps_the_live_pair(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    live = promote(reg, tmp_path, 1)
    before = (reg.root / "CURRENT.json").read_bytes()
    version = reg.register_model(fake_model(tmp_path, 2))
    store = reg.add_store(reg.new_staging("store"), version)
    real_fsync = os.fsync

    def fsync_full(fd: int) -> None:  # the temp copy of CURRENT.json cannot be placed on disk
        if ".CURRENT.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_full)
    with pytest.raises(OSError, match="No space left on device"):
        reg.switch(version, store, reason="x")
    assert (reg.root / "CURRENT.json").read_bytes() == before and reg.require_current().store == live.store
    assert not list(reg.root.glob(".CURRENT.json.*"))  # the temp file was removed
    assert [e["event"] for e in reg.events()].count("promote") == 1
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert reg.switch(version, store, reason="x").current.store == store


def test_a_hand_damaged_current_json_is_a_registry_error(tmp_path: Path) -> None:
    from lifecycle.registry import RegistryError

    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    promote(reg, tmp_path, 1)
    (reg.root / "CURRENT.json").write_text('{"schema_version": 1, "current": ')
    with pytest.raises(RegistryError, match="CURRENT.json is damaged.*restore it from a backup"):
        reg.current()


def test_repair_logs_a_switch_whose_bookkeeping_was_cut_off(tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    live = promote(reg, tmp_path, 1)
    # what a kill right after the CURRENT.json rename leaves: no promote line, no promoted_at
    lines = (reg.root / "events.jsonl").read_text().splitlines()
    (reg.root / "events.jsonl").write_text("".join(f"{ln}\n" for ln in lines if '"promote"' not in ln))
    entry = reg.entry(live.model_version)
    entry.pop("promoted_at")
    (reg.root / "entries" / f"{live.model_version}.json").write_text(json.dumps(entry))
    (reg.root / ".CURRENT.json.x1.tmp").write_text("half")
    assert sorted(reg.repair()) == sorted([".CURRENT.json.x1.tmp", f"switch {live.model_version}",
                                           f"promoted_at {live.model_version}"])
    promotes = [e for e in reg.events() if e["event"] == "promote"]
    assert len(promotes) == 1 and promotes[0]["recovered"] and promotes[0]["store"] == live.store
    assert reg.entry(live.model_version)["promoted_at"] == live.switched_at
    assert reg.repair() == []  # idempotent
