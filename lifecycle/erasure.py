"""Erasure: remove a person from every place the product keeps their face data, and say where.

Under the registry's exclusive lock (no switch, rollback or enrolment meanwhile):
- every gallery store of the registry, the live one and each one kept for rollback: the identity's rows are
  deleted (`GalleryStore.remove_identity` rewrites the segments that held them, durably, and unlinks the old
  files, so neither their vectors nor their image paths stay in any file);
- the pinned evaluation set (``eval/``): their images and every pair naming them;
- the on-disk caches keyed by image sha256 (aligned face crops, teacher embeddings), for the images the stores
  recorded for them;
- one ``erase`` entry in the registry's audit trail (identity, counts, places; no biometric data).
Not erased, and reported as such: models trained on their images keep what they learned (retrain without the
person to remove that), and lookup outputs written outside the registry belong to their callers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from indexes import GalleryStore
from lifecycle.registry import ModelRegistry
from pipeline.core.audit import AuditLog
from pipeline.core.config import cache_dir
from pipeline.core.io import write_parquet_atomic
from pipeline.faces.crop_cache import AlignedCropCache
from pipeline.model.teachers import TeacherCache

log = logging.getLogger(__name__)


def _erase_from_eval(eval_dir: Path, identity: str) -> int:
    images_path, pairs_path = eval_dir / "images.parquet", eval_dir / "pairs.parquet"
    if not images_path.is_file():
        return 0
    images = pd.read_parquet(images_path)
    theirs = images["identity"].astype(str) == identity
    if not theirs.any():
        return 0
    gone = set(images.loc[theirs, "image_path"].astype(str))
    write_parquet_atomic(images[~theirs].reset_index(drop=True), images_path)
    if pairs_path.is_file():
        pairs = pd.read_parquet(pairs_path)
        keep = ~(pairs["path1"].astype(str).isin(gone) | pairs["path2"].astype(str).isin(gone))
        write_parquet_atomic(pairs[keep].reset_index(drop=True), pairs_path)
    return int(theirs.sum())


def erase_identity(registry: ModelRegistry, identity: str, *, caches: str | Path | None = None) -> dict[str, Any]:
    """Remove ``identity`` everywhere (see the module docstring). Returns a report: per store the rows removed,
    the evaluation images removed, the cache rows removed, and what cannot be erased here."""
    cache_root = Path(caches) if caches is not None else cache_dir()
    report: dict[str, Any] = {"identity": identity, "stores": {}, "eval_images": 0, "cache_rows": {}}
    shas: set[str] = set()
    with registry.exclusive():
        stores_dir = registry.root / "stores"
        for store_dir in sorted(p for p in stores_dir.iterdir() if (p / "manifest.json").is_file()):
            store = GalleryStore.open(store_dir)
            meta = store.metadata()
            theirs = meta[meta["identity"].astype(str) == identity]
            shas |= set(theirs["image_sha256"].astype(str))
            removed = store.remove_identity(identity) if len(theirs) else 0
            if removed:
                store.compact()  # rewrite what is left so no old segment file outlives the delete
            report["stores"][store_dir.name] = removed
        report["eval_images"] = _erase_from_eval(registry.eval_dir, identity)
        if (cache_root / "aligned").is_dir():
            report["cache_rows"]["aligned_crops"] = AlignedCropCache(cache_root / "aligned").erase(shas)
        if (cache_root / "teachers").is_dir():
            report["cache_rows"]["teacher_embeddings"] = TeacherCache(cache_root / "teachers").erase(sorted(shas))
        report["not_erased"] = ["model weights trained on their images (retrain without them)",
                                "lookup outputs written outside the registry"]
        AuditLog(registry.root / "audit.jsonl").append(
            "erase", identity=identity, rows_removed=sum(report["stores"].values()), stores=report["stores"],
            eval_images=report["eval_images"], cache_rows=report["cache_rows"], images=len(shas))
    log.info("erased %r: %s", identity, report)
    return report
