"""The retrain flow and the registry on real faces: the promotion gate both ways, the re-embedded gallery,
failure before the switch, rollback. One registry's life, step by step (each step checks production)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from flow_testlib import TINY, UNTRAINED, gallery_and_probes, latest_artifacts

from flows.enroll import enroll_flow
from flows.lookup import lookup_flow
from flows.retrain import retrain_flow
from flows.rollback import rollback_flow
from indexes import GalleryStore
from lifecycle.registry import ModelRegistry
from pipeline.core.audit import AuditLog
from pipeline.core.errors import DataError
from pipeline.model.artifacts import load_model
from pipeline.serve.gallery import embed_for_enrolment, gallery_images, identify_chunk

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def live_state(reg: ModelRegistry) -> tuple[bytes, str, int]:
    """What production serves: the pointer file's bytes, the live store's manifest, its rows."""
    pair = reg.require_current()
    store = reg.store_dir(pair.store)
    return (reg.root / "CURRENT.json").read_bytes(), (store / "manifest.json").read_text(), len(GalleryStore.open(store))


def lookup_equals_library(reg: ModelRegistry, probes: pd.DataFrame, tmp: Path) -> None:
    probes[["image_path"]].to_csv(tmp / "probes.csv", index=False)
    out = tmp / f"hits-{reg.require_current().model_version}.parquet"
    lookup_flow(str(tmp / "probes.csv"), str(out), "identify", registry=str(reg.root), top_k=3, chunk_size=16)
    pair = reg.require_current()
    store = GalleryStore.open(reg.store_dir(pair.store))
    model = load_model(reg.model_dir(pair.model_version))
    lib = identify_chunk(store, model, probes.assign(abs_path=probes["image_path"], identity=None), top_k=3).results
    got = pq.read_table(out).to_pandas()
    assert set(got["model_version"]) == {pair.model_version}
    pd.testing.assert_frame_equal(got, lib.reset_index(drop=True), check_dtype=False)


def test_retrain_gates_promotion_reembeds_the_gallery_and_rolls_back(real_subset: Path, tmp_path: Path) -> None:
    reg = ModelRegistry.open(tmp_path / "registry", create=True)
    data = str(real_subset)

    # 1. An empty registry: the first candidate (untrained, 0 steps) is promoted with an empty gallery.
    first = retrain_flow(str(reg.root), data, pairs=None, overrides=UNTRAINED)  # subset: no pairs file
    assert first["promoted"] and first["reason"] == "no current model"
    model_a, store_a = reg.require_current().model_version, reg.require_current().store

    # 2. Enrol 20 people; 3 of their images are copies we can delete later.
    gallery, probes = gallery_and_probes(real_subset, 20)
    (tmp_path / "copies").mkdir()
    for i in range(3):
        copy = tmp_path / "copies" / f"{i}.jpg"
        shutil.copy(gallery.loc[i, "image_path"], copy)
        gallery.loc[i, "image_path"] = str(copy)
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    assert enroll_flow(str(tmp_path / "gallery.csv"), registry=str(reg.root))["enrolled"] == 20
    before = live_state(reg)

    # 3. A better candidate (trained 0.3 min) whose promotion must fail BEFORE the switch: an image is missing.
    hidden = tmp_path / "hidden.jpg"
    shutil.move(tmp_path / "copies" / "1.jpg", hidden)
    with pytest.raises(DataError, match="image file is missing"):
        retrain_flow(str(reg.root), data, pairs=None, overrides=[*TINY, "train.minutes=0.3"])
    assert live_state(reg) == before  # production untouched
    approved = [e for e in reg.versions() if e["status"] == "approved"]
    assert len(approved) == 1 and approved[0]["decision"]["verdict"] == "promote"
    model_b = approved[0]["model_version"]
    assert not list((reg.root / "stores").glob(f"*{model_b}*"))  # no half-built store became a version

    # 4. Image restored: the same candidate is promoted; the gallery is re-embedded with it and searchable.
    shutil.move(hidden, tmp_path / "copies" / "1.jpg")
    second = retrain_flow(str(reg.root), data, pairs=None, candidate=model_b)
    assert second["promoted"] and second["candidate_metric"] > second["live_metric"], second
    pair = reg.require_current()
    assert pair.model_version == model_b and pair.store != store_a and second["gallery_images_reembedded"] == 20
    assert [(p.model_version, p.store) for p in reg.pointer().previous] == [(model_a, store_a)]
    new_store = GalleryStore.open(reg.store_dir(pair.store), model_version=model_b)
    old_images = gallery_images(GalleryStore.open(reg.store_dir(store_a)))
    new_images = gallery_images(new_store)
    assert sorted(new_images["image_sha256"]) == sorted(old_images["image_sha256"])
    direct = embed_for_enrolment(load_model(reg.model_dir(model_b)), old_images)  # the library, independently
    stored = new_store.get_embeddings(new_store.metadata()["row_id"].to_numpy())
    order = {s: i for i, s in enumerate(direct.rows["image_sha256"])}
    np.testing.assert_allclose(stored, direct.embeddings[[order[s] for s in new_images["image_sha256"]]], atol=1e-5)
    lookup_equals_library(reg, probes, tmp_path)
    after_b = live_state(reg)
    kinds = {k: t for k, (t, _) in latest_artifacts("retrain-roc", "retrain-metrics", "retrain-evaluation",
                                                     "retrain-summary", "retrain-summary-counts").items()}
    assert kinds == {"retrain-roc": "image", "retrain-metrics": "table", "retrain-evaluation": "markdown",
                     "retrain-summary": "markdown", "retrain-summary-counts": "table"}
    assert (reg.root / "entries" / f"{model_b}-roc.png").read_bytes().startswith(b"\x89PNG")

    # 5. A worse candidate (untrained, another architecture width) is rejected; production untouched.
    worse = retrain_flow(str(reg.root), data, pairs=None, overrides=[*UNTRAINED, "model.embedding_dim=24"])
    assert not worse["promoted"] and worse["verdict"] == "reject"
    assert worse["candidate_metric"] < worse["live_metric"], worse
    assert worse["live_metric"] == pytest.approx(second["candidate_metric"], abs=1e-4)  # the same pinned pairs
    assert live_state(reg) == after_b

    # 6. Enrol one more person into the live (B) store, then roll back: the previous pair is live again,
    #    caught up with that enrolment (embedded with model A).
    extra, _ = gallery_and_probes(real_subset, 1, offset=40)
    extra.to_csv(tmp_path / "extra.csv", index=False)
    assert enroll_flow(str(tmp_path / "extra.csv"), registry=str(reg.root))["enrolled"] == 1
    rolled = rollback_flow(str(reg.root))
    assert (rolled["model_version"], rolled["store"], rolled["caught_up_added"]) == (model_a, store_a, 1)
    assert len(GalleryStore.open(reg.store_dir(store_a), model_version=model_a)) == 21
    lookup_equals_library(reg, probes, tmp_path)

    # 7. The margin gate: B beats A, but not by the 0.5 AUC required -> rejected.
    gated = retrain_flow(str(reg.root), data, pairs=None, candidate=model_b, min_improvement=0.5)
    assert not gated["promoted"] and gated["candidate_metric"] > gated["live_metric"], gated
    assert gated["candidate_metric"] == pytest.approx(second["candidate_metric"], abs=1e-4)
    assert gated["live_metric"] == pytest.approx(first["candidate_metric"], abs=1e-4)
    assert reg.require_current().model_version == model_a
    events = [e["event"] for e in reg.events()]
    assert events.count("promote") == 2 and events.count("rollback") == 1
    # the audit trail holds the same story, hash-chained and intact
    trail = AuditLog(reg.root / "audit.jsonl")
    assert [e["event"] for e in trail.entries()] == ["promote", "promote", "rollback"] and trail.verify().ok
    assert trail.entries()[-1]["model_version"] == model_a
