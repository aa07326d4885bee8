"""The model registry (lifecycle/registry.py): versions, the atomic pointer, rollback, pruning, the gate."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from lifecycle.promotion import PromotionError, decide, metric_value
from lifecycle.registry import ModelRegistry, Pair, RegistryError
from pipeline.model.artifacts import compute_model_version, preprocessing_dict


def fake_model(root: Path, seed: int) -> Path:
    """A model directory that passes model.json checks (weights are random bytes: never loaded here)."""
    d = root / f"model-{seed}"
    (d / "checkpoint").mkdir(parents=True)
    weights = hashlib.sha256(str(seed).encode()).digest() * 8
    (d / "model.safetensors").write_bytes(weights)
    (d / "checkpoint" / "last.safetensors").write_bytes(b"optimizer state")
    pre = preprocessing_dict(0.5, 32, True)
    sha = hashlib.sha256(weights).hexdigest()
    meta = {"format": "facepipe-model", "format_version": 1, "weights_sha256": sha, "backbone": "test_resnet",
            "embedding_dim": 32, "preprocessing": pre, "thresholds": {"far=0.001": 0.5}, "default_threshold": 0.5,
            "model_version": compute_model_version(sha, "test_resnet", 32, pre), "metrics": {"val": {}}}
    (d / "model.json").write_text(json.dumps(meta))
    return d


def promote(reg: ModelRegistry, tmp: Path, seed: int) -> Pair:
    version = reg.register_model(fake_model(tmp, seed))
    store = reg.new_staging("store")
    (store / "manifest.json").write_text("{}")
    return reg.switch(version, reg.add_store(store, version), reason=f"seed {seed}").current


def test_register_copies_the_artefact_once(tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    src = fake_model(tmp_path, 1)
    v = reg.register_model(src)
    assert reg.register_model(src) == v  # idempotent
    assert sorted(p.name for p in reg.model_dir(v).iterdir()) == ["model.json", "model.safetensors"]
    assert reg.entry(v)["model_version"] == v and reg.versions()[0]["status"] == "candidate"
    assert [e["event"] for e in reg.events()] == ["register"]
    assert not any((reg.root / "staging").iterdir())
    with pytest.raises(RegistryError, match="not a model registry"):
        ModelRegistry.open(tmp_path / "nowhere")


def test_switch_and_rollback_move_the_pair_atomically(tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    assert reg.current() is None
    with pytest.raises(RegistryError, match="no previous pair"):
        reg.rollback()
    a = promote(reg, tmp_path, 1)
    b = promote(reg, tmp_path, 2)
    ptr = reg.pointer()
    assert (ptr.current.model_version, ptr.current.store) == (b.model_version, b.store)
    assert [(p.model_version, p.store) for p in ptr.previous] == [(a.model_version, a.store)]
    statuses = {e["model_version"]: e["status"] for e in reg.versions()}
    assert statuses == {a.model_version: "standby", b.model_version: "live"}

    seen = []
    back = reg.rollback(before_commit=lambda old, new: seen.append((old.store, new.store)))
    assert seen == [(b.store, a.store)]
    assert (back.current.model_version, back.current.store, back.previous) == (a.model_version, a.store, ())
    assert [e["event"] for e in reg.events()] == ["register", "promote", "register", "promote", "rollback"]
    assert {e["model_version"]: e["status"] for e in reg.versions()}[b.model_version] == "rolled_back"


def test_a_failing_hook_or_crash_leaves_the_live_pair_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    promote(reg, tmp_path, 1)
    before = (reg.root / "CURRENT.json").read_bytes()
    version = reg.register_model(fake_model(tmp_path, 2))
    staged = reg.new_staging("store")
    store = reg.add_store(staged, version)

    def boom(old: Pair | None, new: Pair) -> None:
        raise OSError("disk full during catch-up")

    with pytest.raises(OSError, match="catch-up"):
        reg.switch(version, store, reason="x", before_commit=boom)
    assert (reg.root / "CURRENT.json").read_bytes() == before

    real_replace = os.replace

    def crash(src: str, dst: str) -> None:
        if str(dst).endswith("CURRENT.json"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        reg.switch(version, store, reason="x")
    assert (reg.root / "CURRENT.json").read_bytes() == before
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".CURRENT")]  # no temp file left
    with pytest.raises(RegistryError, match="does not exist"):
        reg.switch(version, "no-such-store", reason="x")
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(RegistryError, match="live pair changed"):  # decided against another live pair
        reg.switch(version, store, reason="x", expect_live="some-older-store")
    assert (reg.root / "CURRENT.json").read_bytes() == before
    assert reg.switch(version, store, reason="x", expect_live=reg.require_current().store).current.store == store


def test_a_shared_holder_blocks_the_switch(tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True, lock_timeout_s=0.3)
    a = promote(reg, tmp_path, 1)
    version = reg.register_model(fake_model(tmp_path, 2))
    store = reg.add_store(reg.new_staging("store"), version)
    with reg.shared() as pair:
        assert pair.model_version == a.model_version
        with pytest.raises(RegistryError, match="locked"):
            reg.switch(version, store, reason="x")
    done = threading.Event()
    with reg.shared():
        t = threading.Thread(target=lambda: (ModelRegistry.open(reg.root, lock_timeout_s=5).switch(
            version, store, reason="x"), done.set()))
        t.start()
        assert not done.wait(0.3)  # waits for the enrolment commit to finish
    t.join(5)
    assert done.is_set() and reg.require_current().model_version == version


def test_prune_keeps_n_previous_pairs_and_all_metrics(tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "reg", create=True)
    pairs = [promote(reg, tmp_path, seed) for seed in range(4)]
    rejected = [reg.register_model(fake_model(tmp_path, 10 + i)) for i in range(2)]
    for v in rejected:
        reg.record_evaluation(v, {"metrics": {}}, {"verdict": "reject"})
    old = reg.new_staging("train")
    os.utime(old, (0, 0))  # a day-old leftover of a crashed run
    removed = reg.prune(keep=1)
    ptr = reg.pointer()
    assert ptr.current.store == pairs[3].store and [p.store for p in ptr.previous] == [pairs[2].store]
    assert sorted(p.name for p in (reg.root / "stores").iterdir()) == sorted([pairs[2].store, pairs[3].store])
    assert sorted(p.name for p in (reg.root / "models").iterdir()) == sorted(
        [pairs[2].model_version, pairs[3].model_version, rejected[1]])  # the newest rejected one is kept
    assert str(old) in removed
    statuses = [e["status"] for e in reg.versions()]
    assert statuses == ["retired", "retired", "standby", "live", "retired", "rejected"]  # entries never deleted


def pairs_metrics(auc: float, eer: float = 0.2) -> dict:
    return {"pairs": {"auc": auc, "accuracy": auc, "eer": eer, "tar_at_far": {"0.001": auc / 2}}}


def test_the_gate_needs_more_than_the_margin() -> None:
    assert decide(pairs_metrics(0.7), None, "auc", 0.0)["verdict"] == "promote"
    assert decide(pairs_metrics(0.80), pairs_metrics(0.78), "auc", 0.01)["verdict"] == "promote"
    assert decide(pairs_metrics(0.785), pairs_metrics(0.78), "auc", 0.01)["verdict"] == "reject"
    assert decide(pairs_metrics(0.78), pairs_metrics(0.78), "auc", 0.0)["verdict"] == "reject"  # equal is not better
    assert decide(pairs_metrics(0.7, eer=0.1), pairs_metrics(0.7, eer=0.2), "eer", 0.05)["verdict"] == "promote"
    assert decide(pairs_metrics(0.9, eer=0.3), pairs_metrics(0.7, eer=0.2), "eer", 0.0)["verdict"] == "reject"
    assert decide(pairs_metrics(float("nan")), pairs_metrics(0.5), "auc", 0.0)["verdict"] == "reject"
    leaked = decide(pairs_metrics(0.99), pairs_metrics(0.5), "auc", 0.0, candidate_trained_on=3)
    assert leaked["verdict"] == "reject" and "trained on 3" in leaked["reason"]
    assert metric_value(pairs_metrics(0.8), "tar@far=1e-3") == 0.4
    with pytest.raises(PromotionError, match="valid"):
        metric_value(pairs_metrics(0.8), "tar@far=0.5")
    with pytest.raises(PromotionError, match="not one of"):
        decide(pairs_metrics(0.8), None, "f1", 0.0)
    with pytest.raises(PromotionError, match=">= 0"):
        decide(pairs_metrics(0.8), None, "auc", -0.1)
