"""Full integrity check and the `info()` description of a store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from indexes.atomic import sha256_file
from indexes.errors import StoreCorrupt
from indexes.manifest import MANIFEST_NAME, read_manifest
from indexes.snapshot import Snapshot, load_snapshot

_RESTORE = "restore the store directory from a backup (or re-enrol the gallery into a new store)"


def check_integrity(store_dir: Path) -> None:
    """sha256 of every listed file, then structure, row ids, model versions and counts. Raises StoreCorrupt."""
    manifest = read_manifest(store_dir)
    for seg in manifest.segments:
        for entry in seg.files():
            path = store_dir / entry.name
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                raise StoreCorrupt(f"{path} is listed in {MANIFEST_NAME} but missing; {_RESTORE}") from None
            if size != entry.size:
                raise StoreCorrupt(f"{path} is {size} bytes, {MANIFEST_NAME} records {entry.size}; {_RESTORE}")
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise StoreCorrupt(f"{path} has sha256 {digest}, {MANIFEST_NAME} records {entry.sha256} "
                                   f"(the file's content changed); {_RESTORE}")
    snap = load_snapshot(store_dir)
    for seg in snap.segments:
        versions = seg.table.column("model_version")
        if not pc.all(pc.equal(versions, manifest.model_version)).as_py():
            raise StoreCorrupt(f"{seg.path}: rows with a model_version other than the store's "
                               f"{manifest.model_version!r}; {_RESTORE}")
    identities = len(snap.identities())
    if identities != manifest.identities:
        raise StoreCorrupt(f"{store_dir / MANIFEST_NAME}: counts.identities={manifest.identities} but the segments "
                           "hold "
                           f"{identities} distinct identities; {_RESTORE}")


def describe(snap: Snapshot) -> dict[str, Any]:
    """JSON-able summary of a snapshot (what `facepipe info` prints)."""
    m = snap.manifest
    files = [entry for seg in m.segments for entry in seg.files()]
    manifest_bytes = os.stat(snap.path / MANIFEST_NAME).st_size
    info: dict[str, Any] = {
        "path": str(snap.path),
        "schema_version": m.schema_version,
        "generation": m.generation,
        "model_version": m.model_version,
        "model_path": m.model_path,
        "embedding_dim": m.embedding_dim,
        "index_type": m.index.kind,
        "index": m.index.to_dict(),
        "rows": m.rows,
        "identities": m.identities,
        "segments": len(m.segments),
        "segment_rows": [seg.rows for seg in m.segments],
        "bytes_on_disk": sum(entry.size for entry in files) + manifest_bytes,
        "threshold": m.threshold,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "next_row_id": m.next_row_id,
        "ann": None,
    }
    if m.index.approximate:
        with_ann = [seg for seg in m.segments if seg.ann is not None]
        indexed_rows = sum(seg.rows for seg in with_ann)
        info["ann"] = {
            "segments_with_index": len(with_ann),
            "rows_with_index": indexed_rows,
            "rows_searched_exactly": m.rows - indexed_rows,
            "segment_recall": (sum(seg.ann.recall * seg.rows for seg in with_ann if seg.ann) / indexed_rows
                               if indexed_rows else None),
            "store_recall": m.ann_recall,
        }
    return info
