"""An append-only audit trail: who enrolled, removed, promoted or rolled back what, and when. No biometric data.

One JSON object a line. Each entry holds ``seq`` (1, 2, ...), ``at`` (UTC), ``event``, ``caller`` (user, host,
pid, and the Prefect flow run id when inside a flow: ``$PREFECT__FLOW_RUN_ID``), the event's fields (counts,
identity names, model and store versions; never embeddings or image bytes), ``prev`` (the previous entry's
``hash``; 64 zeros for the first) and ``hash`` = sha256 of the entry's canonical JSON without ``hash``.
Editing, inserting or deleting a line breaks the chain. A sidecar ``<log>.head`` (replaced atomically after each
append) holds the last ``seq`` and ``hash``, so cutting entries off the end is detected too.

Crash safety: an entry is one ``write`` of a whole line on an ``O_APPEND`` descriptor, fsynced, under an
exclusive file lock; the head is written after it. A process killed between the two leaves the head one entry
behind (accepted, and repaired by the next append); killed inside the write, it leaves a torn last line, which
`verify` reports and the next append cuts off (it was never acknowledged). A full disk fails the append with
the log unchanged (the partial line is truncated away) and raises ``OSError``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import DataError
from pipeline.core.io import FileLock, utc_now, write_json_atomic

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def caller() -> dict[str, Any]:
    """Who is acting: OS user, host, pid, and the flow run when inside a Prefect flow."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): the uid identifies the caller
        user = f"uid:{os.getuid()}"
    who: dict[str, Any] = {"user": user, "host": socket.gethostname(), "pid": os.getpid()}
    if run := os.environ.get("PREFECT__FLOW_RUN_ID"):
        who["flow_run_id"] = run
    return who


@dataclass(frozen=True)
class AuditCheck:
    """The result of `AuditLog.verify`: ``ok`` and the entries read, or the first problem found."""

    ok: bool
    entries: int
    problem: str = ""


class AuditLog:
    """The audit trail in file ``path`` (created with its folder on the first append)."""

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.head = self.path.with_name(self.path.name + ".head")
        self.lock_timeout_s = lock_timeout_s

    def _lock(self) -> FileLock:
        return FileLock(self.path.with_name(self.path.name + ".lock"), self.lock_timeout_s,
                        what=f"the audit log {self.path}")

    def _lines(self) -> tuple[list[bytes], bool]:
        """Complete lines, and whether a torn (unterminated) last line follows them."""
        if not self.path.is_file():
            return [], False
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        return [line for line in lines[:-1] if line], bool(lines[-1])

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry (durably) and return it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            lines, torn = self._lines()
            if torn:  # a killed writer's unacknowledged partial line: cut it off before appending
                with open(self.path, "r+b") as fh:
                    fh.truncate(sum(len(line) + 1 for line in lines))
            last = json.loads(lines[-1]) if lines else {"seq": 0, "hash": GENESIS}
            entry = {"seq": int(last["seq"]) + 1, "at": utc_now(), "event": event, "caller": caller(), **fields,
                     "prev": last["hash"]}
            entry["hash"] = _digest(entry)
            line = (json.dumps(entry, sort_keys=True) + "\n").encode()
            size = self.path.stat().st_size if self.path.exists() else 0
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # the log stays as it was
                raise
            finally:
                os.close(fd)
            write_json_atomic(self.head, {"seq": entry["seq"], "hash": entry["hash"]})
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry, oldest first."""
        lines, _ = self._lines()
        try:
            return [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise DataError(f"audit log {self.path}: a line is not JSON ({exc}); run `facepipe audit --verify`") from exc

    def verify(self) -> AuditCheck:
        """Check the chain and the head: detects edited, inserted, reordered, deleted and cut-off entries."""
        lines, torn = self._lines()
        prev, seq = GENESIS, 0
        for n, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                return AuditCheck(False, n - 1, f"line {n} is not JSON (edited or damaged)")
            if entry.get("seq") != seq + 1 or entry.get("prev") != prev:
                return AuditCheck(False, n - 1, f"line {n} (seq {entry.get('seq')}) does not follow entry {seq}: "
                                                "an entry was deleted, inserted or reordered")
            if entry.get("hash") != _digest(entry):
                return AuditCheck(False, n - 1, f"line {n} (seq {seq + 1}) was edited: its hash does not match")
            prev, seq = entry["hash"], entry["seq"]
        if self.head.is_file():
            head = json.loads(self.head.read_text())
            if head["seq"] > seq:
                return AuditCheck(False, seq, f"the log ends at entry {seq} but entry {head['seq']} was written: "
                                              "entries were cut off the end")
            if head["seq"] == seq and head["hash"] != prev:
                return AuditCheck(False, seq, f"entry {seq} differs from the one written (head hash mismatch)")
            if head["seq"] < seq - 1:
                return AuditCheck(False, seq, f"the head records entry {head['seq']} but the log has {seq}: "
                                              "entries were added by hand")
        elif lines:
            return AuditCheck(False, seq, f"{self.head} is missing: the end of the log cannot be checked")
        if torn:
            return AuditCheck(False, seq, "the last line is incomplete (a writer was killed mid-append; the next "
                                          "append removes it)")
        return AuditCheck(True, seq)
