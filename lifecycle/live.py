"""The live (model, store) pair: switching it atomically after catching the new store up, rolling back, and
committing enrolments into whatever store is live.

The registry (`lifecycle.registry`) owns the pointer and its lock; this module adds the gallery work that must
happen under that lock: the catch-up re-embeds images enrolled into the old live store since the new one was
built, so no enrolment is lost by a switch or a rollback.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from indexes import GalleryStore
from lifecycle.registry import ANY, ModelRegistry, Pair, Pointer
from pipeline.core.audit import AuditLog
from pipeline.model.artifacts import load_model
from pipeline.serve.gallery import (
    ChunkResult,
    EnrolBatch,
    commit_enrolment,
    embed_for_enrolment,
    sync_store,
)


def _catch_up(registry: ModelRegistry, chunk_size: int, report: dict[str, int]) -> Callable[[Pair | None, Pair], None]:
    def hook(old: Pair | None, new: Pair) -> None:
        if old is None or old.store == new.store:
            return
        model = load_model(registry.model_dir(new.model_version))
        target = GalleryStore.open(registry.store_dir(new.store), model_version=model.model_version)
        report.update(sync_store(GalleryStore.open(registry.store_dir(old.store)), target, model, chunk_size))
    return hook


def switch_pair(registry: ModelRegistry, model_version: str, store_id: str, *, reason: str, chunk_size: int = 1024,
                expect_live: str | None = ANY) -> tuple[Pointer, dict[str, int]]:
    """Make (model, store) live atomically, after catching the store up with images enrolled into the live
    store meanwhile (under the registry's exclusive lock, so none can slip in). Returns (pointer, catch-up).
    ``expect_live``: the live store the promotion was decided against (see `ModelRegistry.switch`)."""
    report = {"added": 0, "removed": 0}
    ptr = registry.switch(model_version, store_id, reason=reason, before_commit=_catch_up(registry, chunk_size, report),
                          expect_live=expect_live)
    audit(registry).append("promote", model_version=model_version, store=store_id, reason=reason,
                           caught_up=report)
    return ptr, report


def rollback_pair(registry: ModelRegistry, *, reason: str = "rollback",
                  chunk_size: int = 1024) -> tuple[Pointer, dict[str, int]]:
    """Make the previous (model, store) pair live again, caught up with the images enrolled since."""
    report = {"added": 0, "removed": 0}
    ptr = registry.rollback(reason=reason, before_commit=_catch_up(registry, chunk_size, report))
    live = registry.require_current()
    audit(registry).append("rollback", model_version=live.model_version, store=live.store, reason=reason,
                           caught_up=report)
    return ptr, report


def audit(registry: ModelRegistry) -> AuditLog:
    """The registry's audit trail (`pipeline.core.audit`): ``REGISTRY/audit.jsonl``."""
    return AuditLog(registry.root / "audit.jsonl")


def commit_to_registry(registry: ModelRegistry, batch: EnrolBatch) -> ChunkResult:
    """Commit an embedded batch into the registry's live store, holding the registry shared so no switch
    happens meanwhile; a batch embedded by a model that is no longer live is re-embedded first."""
    with registry.shared() as pair:
        store = GalleryStore.open(registry.store_dir(pair.store), model_version=pair.model_version)
        if batch.model_version != pair.model_version:
            model = load_model(registry.model_dir(pair.model_version))
            rows = batch.rows.drop(columns=["image_sha256"])
            fresh = embed_for_enrolment(model, rows)
            batch = EnrolBatch(fresh.rows, fresh.embeddings, pd.concat([batch.rejects, fresh.rejects], ignore_index=True),
                               fresh.model_version, batch.skipped)
        return commit_enrolment(store, batch)
