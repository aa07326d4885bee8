"""Model registry: model versions with their metrics, gallery store versions, and ONE pointer to the live pair.

Layout (a directory)::

    REGISTRY/
      CURRENT.json                  the live (model, store) pair + the rollback stack: the single commit point
      events.jsonl                  append-only log: register, evaluate, promote, rollback, prune (one JSON a line)
      LOCK                          flock: exclusive for writes to the registry, shared for enrolment commits
      models/<model_version>/       model artefacts (model.safetensors + model.json), never modified
      entries/<model_version>.json  each version's metrics on the fixed evaluation set and its decision
      stores/<store_id>/            gallery stores; each holds the embeddings of exactly one model version
      eval/                         the fixed evaluation pair set, pinned by the first retrain (delete to re-pin)
      staging/<name>/               work in progress (training, store builds); never referenced by CURRENT

Switching is atomic: the new pair is written to a temp file, fsynced and ``os.replace``-d onto CURRENT.json,
so a reader sees the old pair or the new pair, never a model with another model's store. Stores and
models are built completely before the switch; old pairs stay on disk for rollback until pruned.
Writers hold LOCK exclusively; enrolment commits hold it shared, so a switch (which runs a catch-up
hook under the exclusive lock) never misses an image enrolled into the old store while it was built.
Standard library only (plus ``pipeline.model.artifacts`` to check model.json): no torch work, no prefect.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from indexes.errors import StoreLocked
from pipeline.core.errors import FacepipeError
from pipeline.core.io import FileLock, fsync_dir, utc_now, write_json_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
POINTER, EVENTS, LOCK = "CURRENT.json", "events.jsonl", "LOCK"
MODEL_FILES = ("model.safetensors", "model.json")
STAGING_TTL = timedelta(hours=24)
ANY = "*"  # `switch(expect_live=ANY)`: whatever pair is live


class RegistryError(FacepipeError):
    """A registry operation that cannot proceed (names the path and what to do)."""


@dataclass(frozen=True)
class Pair:
    """A model version and the gallery store embedded with it."""

    model_version: str
    store: str
    switched_at: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Pointer:
    """CURRENT.json: the live pair and the previous pairs, most recent first (the rollback stack)."""

    current: Pair
    previous: tuple[Pair, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "current": asdict(self.current),
                "previous": [asdict(p) for p in self.previous]}


SwitchHook = Callable[[Pair | None, Pair], None]


class ModelRegistry:
    """A registry directory (see the module docstring). Create with ``ModelRegistry.open(path, create=True)``."""

    def __init__(self, root: Path, lock_timeout_s: float) -> None:
        self.root, self.lock_timeout_s = root, lock_timeout_s
        self._repaired: list[str] = []  # what the last exclusive lock's repair did

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, create: bool = False, lock_timeout_s: float = 600.0) -> ModelRegistry:
        """Open a registry; ``create=True`` makes the (empty) layout if it is missing."""
        path = Path(root).resolve()
        if not (path / LOCK).is_file():
            if not create:
                raise RegistryError(f"{path} is not a model registry (no {LOCK} file); run the retrain flow to create it")
            for sub in ("models", "entries", "stores", "staging"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            (path / LOCK).touch()
        return cls(path, lock_timeout_s)

    # ----------------------------------------------------------------- paths and reads
    def model_dir(self, model_version: str) -> Path:
        return self.root / "models" / model_version

    def store_dir(self, store_id: str) -> Path:
        return self.root / "stores" / store_id

    @property
    def eval_dir(self) -> Path:  # the pinned evaluation pair set (once a retrain has pinned it)
        return self.root / "eval"

    def pin_eval(self, staged: Path) -> Path:
        """Make a staged directory the evaluation set, unless one is pinned already (then ``staged`` is dropped)."""
        with self._lock(fcntl.LOCK_EX):
            if self.eval_dir.is_dir():
                shutil.rmtree(staged, ignore_errors=True)
            else:
                os.rename(staged, self.eval_dir)
                fsync_dir(self.root)
                self._log("pin_eval", files=sorted(p.name for p in self.eval_dir.iterdir()))
        return self.eval_dir

    def pointer(self) -> Pointer | None:
        """The live pair and rollback stack, or None before the first promotion."""
        path = self.root / POINTER
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path} is damaged ({exc}); it is only written atomically, so it was edited by "
                                "hand: restore it from a backup (events.jsonl lists every switch)") from exc
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise RegistryError(f"{path}: schema_version {raw.get('schema_version')!r} is not {SCHEMA_VERSION}")
        return Pointer(Pair(**raw["current"]), tuple(Pair(**p) for p in raw["previous"]))

    def current(self) -> Pair | None:
        return None if (ptr := self.pointer()) is None else ptr.current

    def require_current(self) -> Pair:
        if (pair := self.current()) is None:
            raise RegistryError(f"registry {self.root} has no current model yet; run the retrain flow first "
                                "(or `python -m flows.retrain --registry DIR --candidate MODEL_DIR`)")
        return pair

    def _entry_path(self, model_version: str) -> Path:
        return self.root / "entries" / f"{model_version}.json"

    def entry(self, model_version: str) -> dict[str, Any]:
        if not (path := self._entry_path(model_version)).is_file():
            raise RegistryError(f"model version {model_version} is not registered in {self.root}; "
                                f"registered: {[e['model_version'] for e in self.versions()]}")
        return json.loads(path.read_text(encoding="utf-8"))

    def versions(self) -> list[dict[str, Any]]:
        """Every registered version (oldest first) with its status: live, standby (rollback target), approved
        (passed the gate, switch pending or failed), rolled_back, rejected, candidate, or retired (files pruned)."""
        ptr = self.pointer()
        live, standby = (ptr.current.model_version, {p.model_version for p in ptr.previous}) if ptr else (None, set())
        out = []
        for path in (self.root / "entries").glob("*.json"):
            e = json.loads(path.read_text(encoding="utf-8"))
            v, verdict = e["model_version"], e.get("decision", {}).get("verdict", "")
            status = ("live" if v == live else "retired" if not self.model_dir(v).is_dir() else "standby"
                      if v in standby else "rolled_back" if e.get("promoted_at") else
                      {"promote": "approved", "reject": "rejected"}.get(verdict, "candidate"))
            out.append({**e, "status": status})
        return sorted(out, key=lambda e: e["registered_at"])

    def events(self) -> list[dict[str, Any]]:
        lines = (self.root / EVENTS).read_text(encoding="utf-8").splitlines() if (self.root / EVENTS).is_file() else []
        return [json.loads(line) for line in lines if line.strip()]

    # ----------------------------------------------------------------- locking and logging
    @contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        lock = FileLock(self.root / LOCK, self.lock_timeout_s, shared=mode == fcntl.LOCK_SH, poll_s=0.05,
                        what=f"registry {self.root}")
        try:
            lock.acquire()
        except StoreLocked as exc:
            raise RegistryError(f"registry {self.root} is locked by another writer for more than "
                                f"{self.lock_timeout_s:.0f} s; retry later") from exc
        try:
            if mode == fcntl.LOCK_EX:
                self._repair()
            yield
        finally:
            lock.release()

    @contextmanager
    def exclusive(self) -> Iterator[Pair | None]:
        """Hold the registry exclusively (no switch, rollback or enrolment commit meanwhile); yields the live
        pair. For work that must see every store at rest, e.g. erasure."""
        with self._lock(fcntl.LOCK_EX):
            yield self.current

    @contextmanager
    def shared(self) -> Iterator[Pair]:
        """Hold the registry shared (no switch can happen) and yield the live pair: for enrolment commits."""
        with self._lock(fcntl.LOCK_SH):
            yield self.require_current()

    def repair(self) -> list[str]:
        """Finish the bookkeeping of a write killed after its commit -> what was repaired (every write does
        this first under the exclusive lock; `facepipe`'s status reads may call it too)."""
        with self._lock(fcntl.LOCK_EX):
            return self._repaired

    def _repair(self) -> None:
        """CURRENT.json and entries/ are the truth; events.jsonl and an entry's ``promoted_at`` follow them
        and can lag by the one write that was killed between them. Call holding the exclusive lock."""
        done = [str(p.relative_to(self.root)) for p in [*self.root.glob(".*.tmp"), *self.root.glob("entries/.*.tmp")]]
        for name in done:  # temp files of killed atomic writes: never read, never renamed any more
            (self.root / name).unlink(missing_ok=True)
        events = self.events()
        logged = {e.get("model_version") for e in events if e["event"] == "register"}
        for path in sorted((self.root / "entries").glob("*.json")):
            if (version := path.stem) not in logged:
                self._log("register", model_version=version, source=self.entry(version).get("source", ""), recovered=True)
                done.append(f"register {version}")
        if (ptr := self.pointer()) is not None:
            cur = ptr.current
            switches = [e for e in events if e["event"] in ("promote", "rollback")]
            if not switches or (switches[-1].get("model_version"), switches[-1].get("store")) != (cur.model_version, cur.store):
                earlier = any((e.get("model_version"), e.get("store")) == (cur.model_version, cur.store) for e in switches)
                self._log("rollback" if earlier else "promote", model_version=cur.model_version,
                          store=cur.store, reason=cur.reason, recovered=True)
                done.append(f"switch {cur.model_version}")
            if self._entry_path(cur.model_version).is_file() and "promoted_at" not in (e := self.entry(cur.model_version)):
                write_json_atomic(self._entry_path(cur.model_version), {**e, "promoted_at": cur.switched_at})
                done.append(f"promoted_at {cur.model_version}")
        if done:
            log.warning("registry %s: finished an interrupted write: %s", self.root, done)
        self._repaired = done

    def _log(self, event: str, **fields: Any) -> None:
        line = json.dumps({"at": utc_now(), "event": event, **fields}, sort_keys=True) + "\n"
        fd = os.open(self.root / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("registry %s: %s %s", self.root, event, fields)

    # ----------------------------------------------------------------- writes
    def new_staging(self, kind: str) -> Path:
        """A fresh work directory under staging/ (removed by `prune` after a day if left behind)."""
        path = self.root / "staging" / f"{kind}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def register_model(self, model_dir: str | os.PathLike[str], *, source: str = "") -> str:
        """Copy a model artefact into models/<model_version>/ (atomically) -> its version. Idempotent."""
        from pipeline.model.artifacts import (
            read_model_meta,  # checks model.json and its content hash
        )

        src = Path(model_dir)
        version = str((meta := read_model_meta(src))["model_version"])
        with self._lock(fcntl.LOCK_EX):
            dest = self.model_dir(version)
            if not dest.is_dir():
                tmp = self.new_staging("model")
                for name in MODEL_FILES:
                    shutil.copy2(src / name, tmp / name)
                    with open(tmp / name, "rb") as fh:  # the copy is on disk before the rename publishes it
                        os.fsync(fh.fileno())
                fsync_dir(tmp)
                os.rename(tmp, dest)
                fsync_dir(dest.parent)
            if not self._entry_path(version).is_file():
                write_json_atomic(self._entry_path(version), {
                    "model_version": version, "registered_at": utc_now(), "source": source or str(src),
                    "created_at": meta.get("created_at"), "training_metrics": meta.get("metrics", {}), "evaluations": []})
                self._log("register", model_version=version, source=source or str(src))
        return version

    def record_evaluation(self, model_version: str, evaluation: dict[str, Any],
                          decision: dict[str, Any] | None = None) -> None:
        """Store a version's metrics on the fixed evaluation set (the last 20 are kept) and, for a candidate,
        the promotion decision taken on them."""
        with self._lock(fcntl.LOCK_EX):
            e = self.entry(model_version)
            e["evaluations"] = [*e.get("evaluations", []), {"at": utc_now(), **evaluation}][-20:]
            if decision is not None:
                e["decision"] = {"at": utc_now(), **decision}
            write_json_atomic(self._entry_path(model_version), e)
            self._log("evaluate", model_version=model_version, **(decision or {}))

    def add_store(self, staged: Path, model_version: str) -> str:
        """Move a finished store out of staging into stores/<id> -> the store id (not live yet)."""
        store_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{model_version}-{uuid.uuid4().hex[:6]}"
        os.rename(staged, self.store_dir(store_id))
        fsync_dir(self.root / "stores")
        return store_id

    def switch(self, model_version: str, store_id: str, *, reason: str, before_commit: SwitchHook | None = None,
               expect_live: str | None = ANY) -> Pointer:
        """Make (model_version, store_id) live in one atomic replace of CURRENT.json; the old pair goes on the
        rollback stack. ``before_commit(old, new)`` runs under the exclusive lock (e.g. a gallery catch-up).
        ``expect_live``: the live store the decision was taken against (None: no live pair); if another run
        changed it meanwhile, nothing is switched (RegistryError)."""
        for path in (self.model_dir(model_version), self.store_dir(store_id)):
            if not path.is_dir():
                raise RegistryError(f"cannot switch to {path}: it does not exist")
        with self._lock(fcntl.LOCK_EX):
            old = self.pointer()
            if expect_live != ANY and (None if old is None else old.current.store) != expect_live:
                raise RegistryError(f"the live pair changed during this run (expected store {expect_live}, found "
                                    f"{None if old is None else old.current.store}); nothing switched, run it again")
            new = Pair(model_version, store_id, utc_now(), reason)
            if before_commit is not None:
                before_commit(None if old is None else old.current, new)
            previous = () if old is None else (old.current, *old.previous)
            ptr = Pointer(new, tuple(p for p in previous if (p.model_version, p.store) != (model_version, store_id)))
            write_json_atomic(self.root / POINTER, ptr.to_dict())
            write_json_atomic(self._entry_path(model_version), {**self.entry(model_version),
                                                                 "promoted_at": new.switched_at})
            self._log("promote", model_version=model_version, store=store_id, reason=reason,
                      replaced=None if old is None else asdict(old.current))
        return ptr

    def rollback(self, *, reason: str = "rollback", before_commit: SwitchHook | None = None) -> Pointer:
        """Make the previous pair live again (atomically); the rolled-back pair leaves the stack."""
        with self._lock(fcntl.LOCK_EX):
            old = self.pointer()
            if old is None or not old.previous:
                raise RegistryError(f"registry {self.root} has no previous pair to roll back to")
            target = old.previous[0]
            for path in (self.model_dir(target.model_version), self.store_dir(target.store)):
                if not path.is_dir():
                    raise RegistryError(f"cannot roll back: {path} was pruned")
            new = replace(target, switched_at=utc_now(), reason=reason)
            if before_commit is not None:
                before_commit(old.current, new)
            ptr = Pointer(new, old.previous[1:])
            write_json_atomic(self.root / POINTER, ptr.to_dict())
            self._log("rollback", model_version=new.model_version, store=new.store, reason=reason,
                      replaced=asdict(old.current))
        return ptr

    def prune(self, keep: int) -> list[str]:
        """Keep the live pair and the ``keep`` most recent previous pairs (and the ``keep`` newest rejected
        candidates, for inspection); delete other stores, retired models and stale staging dirs -> paths removed.
        Metrics (entries/) and the event log are never deleted."""
        if keep < 0:
            raise RegistryError(f"keep={keep} must be >= 0")
        removed: list[str] = []
        with self._lock(fcntl.LOCK_EX):
            ptr = self.pointer()
            if ptr is not None and len(ptr.previous) > keep:
                ptr = Pointer(ptr.current, ptr.previous[:keep])
                write_json_atomic(self.root / POINTER, ptr.to_dict())
            pairs = [] if ptr is None else [ptr.current, *ptr.previous]
            live_models, live_stores = {p.model_version for p in pairs}, {p.store for p in pairs}
            for path in sorted((self.root / "stores").iterdir()):
                if path.name not in live_stores:
                    shutil.rmtree(path)
                    removed.append(str(path))
            entries = {e["model_version"]: e for e in self.versions()}
            rejected = sorted((e for e in entries.values() if e["status"] == "rejected"),
                              key=lambda e: e["registered_at"], reverse=True)
            drop = {e["model_version"] for e in rejected[keep:]}
            drop |= {v for v, e in entries.items() if e.get("promoted_at") and v not in live_models}
            for version in sorted(drop):
                if self.model_dir(version).is_dir():
                    shutil.rmtree(self.model_dir(version))
                    removed.append(str(self.model_dir(version)))
            cutoff = datetime.now(timezone.utc) - STAGING_TTL
            for path in (self.root / "staging").iterdir():
                if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(str(path))
            if removed:
                self._log("prune", keep=keep, removed=[str(Path(p).relative_to(self.root)) for p in removed])
        return removed
