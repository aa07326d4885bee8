"""The audit trail: a hash chain that detects edits, deletions and cut-off ends; kill -9 and full-disk safe."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.audit import GENESIS, AuditLog

ROOT = Path(__file__).resolve().parents[2]


def _log(tmp_path: Path, n: int = 3) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    for i in range(n):
        log.append("enrol", store="s-1", images=i + 1, model_version="m-abc")
    return log


def test_entries_chain_and_carry_the_caller_but_only_the_given_fields(tmp_path: Path) -> None:
    log = _log(tmp_path)
    entries = log.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3] and entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:]))
    assert set(entries[0]) == {"seq", "at", "event", "caller", "store", "images", "model_version", "prev", "hash"}
    assert {"user", "host", "pid"} <= set(entries[0]["caller"])
    assert log.verify().ok and log.verify().entries == 3


@pytest.mark.parametrize(("damage", "message"), [
    ("edit", "line 2 (seq 2) was edited"),
    ("delete", "line 2 (seq 3) does not follow entry 1"),
    ("swap", "line 2 (seq 3) does not follow entry 1"),
    ("cut", "the log ends at entry 2 but entry 3 was written"),
    ("garbage", "line 3 is not JSON"),
    ("head", "is missing"),
])
def test_tampering_is_detected(tmp_path: Path, damage: str, message: str) -> None:
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    if damage == "edit":
        e = json.loads(lines[1])
        e["images"] = 99
        lines[1] = json.dumps(e, sort_keys=True)
    elif damage == "delete":
        del lines[1]
    elif damage == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif damage == "cut":
        lines = lines[:2]
    elif damage == "garbage":
        lines[2] = lines[2][:-5]
    if damage == "head":
        log.head.unlink()
    else:
        log.path.write_text("\n".join(lines) + "\n")
    check = log.verify()
    assert not check.ok and message in check.problem, check


def test_a_torn_last_line_is_reported_then_cut_by_the_next_append(tmp_path: Path) -> None:
    log = _log(tmp_path)
    with open(log.path, "ab") as fh:
        fh.write(b'{"seq": 4, "event": "enr')
    assert "last line is incomplete" in log.verify().problem
    log.append("remove", identity="Someone")
    assert log.verify().ok and [e["seq"] for e in log.entries()] == [1, 2, 3, 4]


def test_a_full_disk_leaves_the_log_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _log(tmp_path)
    before = log.path.read_bytes()
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if data.startswith(b'{"at"'):
            real_write(fd, data[:10])  # part of the line reaches the disk, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        log.append("enrol", images=1)
    monkeypatch.undo()
    assert log.path.read_bytes() == before and log.verify().ok


WRITER = """
import sys
from pipeline.core.audit import AuditLog
log = AuditLog(sys.argv[1])
i = 0
while True:
    i += 1
    log.append("enrol", images=i)
    print(i, flush=True)
"""


def test_kill_9_mid_stream_leaves_a_verifiable_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        acknowledged = 0
        deadline = time.monotonic() + 30
        while acknowledged < 20 * (round_ + 1) and time.monotonic() < deadline:
            acknowledged = int(proc.stdout.readline() or 0) or acknowledged
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log = AuditLog(path)
        check = log.verify()
        assert check.ok or "last line is incomplete" in check.problem, check
        assert check.entries >= acknowledged  # every acknowledged append survived
        log.append("check", round=round_)  # repairs a torn line or a lagging head
        assert log.verify().ok


def test_enrol_and_remove_are_on_the_trail_and_facepipe_audit_verifies_it(tmp_path: Path, synthetic_folders: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main
    from pipeline.core.config import Config, to_dict
    from pipeline.model.artifacts import preprocessing_dict, save_model
    from pipeline.model.encoder import build_model

    save_model(build_model("test_resnet", 8), tmp_path / "m", backbone="test_resnet",
               preprocessing=preprocessing_dict(1.0, 32, False), thresholds={"far=0.001": 0.5}, default_far=1e-3,
               metrics={}, config=to_dict(Config()))
    index = tmp_path / "g"
    assert main(["enroll", "--model", str(tmp_path / "m"), "--index", str(index), "--images", str(synthetic_folders),
                 "-q"]) == 0
    assert main(["remove", "--index", str(index), "--identity", "person_1", "-q"]) == 0
    log = AuditLog(tmp_path / "g.audit.jsonl")
    events = log.entries()
    assert [e["event"] for e in events] == ["enrol", "remove"]
    assert events[0]["enrolled"] == 18 and len(events[0]["identities_added"]) == 6
    assert events[1]["identity"] == "person_1" and events[1]["rows"] == 3
    assert "embedding" not in log.path.read_text()  # no biometric data
    capsys.readouterr()
    assert main(["audit", "--index", str(index), "--verify"]) == 0
    assert "intact, 2 entries" in capsys.readouterr().out
    log.path.write_text(log.path.read_text().replace('"rows": 3', '"rows": 1'))
    assert main(["audit", "--index", str(index), "--verify"]) == 1
    assert "line 2 (seq 2) was edited" in capsys.readouterr().out
