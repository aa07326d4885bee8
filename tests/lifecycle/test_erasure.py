"""Erasure reaches every copy: enrol a person, promote three (model, store) pairs so the live store and two stores
kept for rollback hold them, erase through `facepipe remove --registry`: no file under the registry still holds
their vectors or image paths, rollback still works and they stay gone, and the audit trail records it all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from indexes import GalleryStore
from lifecycle import live
from lifecycle.registry import ModelRegistry
from pipeline.cli import main
from pipeline.core.audit import AuditLog
from pipeline.core.config import load_config
from pipeline.data.manifest import read_images
from pipeline.serve.gallery import enroll_chunk, open_gallery
from pipeline.train.loop import train
from pipeline.train.prepare import prepare_training

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

TINY = ["data.face_detector=none", "distill.teacher=", "data.crop_fraction=0.64", "model.backbone=test_resnet",
        "data.image_size_px=32", "model.embedding_dim=16", "data.val_fraction=0.2", "train.minutes=0.0001"]


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_erasure_reaches_every_store_kept_for_rollback(real_subset: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))
    table = pd.read_csv(real_subset)
    people = sorted(table["identity"].unique())[:8]
    gallery = table[table["identity"].isin(people)].groupby("identity").head(2).reset_index(drop=True)
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    target = people[3]
    reg = ModelRegistry.open(tmp_path / "registry", create=True)
    vectors: list[bytes] = []
    for seed in range(3):  # three (model, store) pairs, each promoted: two stay for rollback
        cfg = load_config(None, [*TINY, f"train.seed={seed}"])
        model_dir = train(cfg, prepare_training(real_subset, None, cfg), tmp_path / f"model{seed}").model_dir
        version = reg.register_model(model_dir)
        staged = reg.new_staging("store")
        store, model = open_gallery(staged, reg.model_dir(version), create=True)
        enroll_chunk(store, model, read_images(tmp_path / "gallery.csv", require_identities=True))
        meta = store.metadata()
        rows = meta.loc[meta["identity"] == target, "row_id"].to_numpy()
        vectors += [v.astype("float32").tobytes()[:32] for v in store.get_embeddings(rows)]
        live.switch_pair(reg, version, reg.add_store(staged, version), reason=f"promote {seed}")
    paths = [str(p).encode() for p in gallery.loc[gallery["identity"] == target, "image_path"]]
    assert len(vectors) == 6 and len(list((reg.root / "stores").iterdir())) == 3
    held = [f for f in _files_under(reg.root) if any(v in f.read_bytes() for v in vectors + paths)]
    assert held  # before: the person is in the stores' files

    assert main(["remove", "--registry", str(reg.root), "--identity", target]) == 0
    leftovers = [f for f in _files_under(reg.root) if any(v in f.read_bytes() for v in vectors + paths)]
    assert leftovers == []
    for store_dir in (reg.root / "stores").iterdir():
        store = GalleryStore.open(store_dir)
        assert target not in store.identities() and len(store.identities()) == 7
        store.verify_integrity()

    live.rollback_pair(reg, reason="after erasure")
    current = GalleryStore.open(reg.store_dir(reg.require_current().store))
    assert target not in current.identities() and len(current) == 14

    trail = AuditLog(reg.root / "audit.jsonl")
    events = trail.entries()
    assert [e["event"] for e in events] == ["promote", "promote", "promote", "erase", "rollback"]
    assert events[3]["identity"] == target and events[3]["rows_removed"] == 6 and trail.verify().ok
    lines = trail.path.read_text().splitlines()
    lines[3] = lines[3].replace('"rows_removed": 6', '"rows_removed": 0')
    trail.path.write_text("\n".join(lines) + "\n")
    assert "line 4 (seq 4) was edited" in trail.verify().problem
