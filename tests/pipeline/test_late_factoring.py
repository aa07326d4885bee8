"""train.factor_at (pipeline/train/late_factoring.py): the full-rank student trains first, then its own weights
are factored to model.pw_ranks part-way and the thinner student trains on; what is saved has the factored shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.data.splits import Split
from pipeline.evaluate.evalset import EvalSet
from pipeline.model.artifacts import load_model
from pipeline.model.embed import embed_array
from pipeline.model.inherit import blocks_of
from pipeline.train.late_factoring import full_rank_arch, is_late
from pipeline.train.loop import train
from pipeline.train.prepare import TrainingData

RANKS = [0, 0, 32, 0, 64, 0, 96, 96, 96, 96, 96, 0, 192]  # ranks F (the default)
RUN = ["data.image_size_px=64", "data.crop_fraction=1.0", "train.augment=false", "train.minutes=3",
       "train.max_steps=12", "train.eval_every_steps=4", "train.identities_per_batch=4", "eval.flip_tta=false",
       "distill.teacher=precomputed", "distill.teacher_file=unused.parquet", "distill.extra_per_batch=8",
       "distill.views=0", "train.member_shares=", f"model.pw_ranks={json.dumps(RANKS)}"]


def _data(n_people: int = 12, per: int = 3, px: int = 64) -> TrainingData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_people * per, px, px, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(n_people), per).astype(np.int64)
    teacher = rng.normal(size=(len(labels), 16)).astype(np.float32)
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    val_idx = np.flatnonzero(labels >= n_people - 4)
    train_idx = np.flatnonzero(labels < n_people - 4)
    pi, pj = np.array([0, 0, 3], np.int64), np.array([1, 3, 4], np.int64)
    val = EvalSet("val", images[val_idx], labels[val_idx].astype(str).astype(object),
                  np.array([f"{i}.png" for i in val_idx], dtype=object), pi, pj, np.array([True, False, False]),
                  np.zeros(3, np.int64), pd.DataFrame(columns=["image_path", "error"]))
    return TrainingData(images[train_idx], labels[train_idx], [str(i) for i in range(n_people - 4)], val,
                        Split(frozenset(), frozenset(), frozenset(), None, None), pd.DataFrame(),
                        pd.DataFrame(columns=["image_path", "error"]), teacher=teacher[train_idx],
                        teacher_info={"name": "synthetic", "version": "t-test", "files": {}, "licence": "CC0"})


def _thin(encoder: nn.Module) -> list[int]:
    return [i for i, b in enumerate(blocks_of(encoder.backbone)) if isinstance(b.conv_pw, nn.Sequential)]


@pytest.mark.slow
def test_factoring_part_way_saves_the_factored_student_and_resumes_with_its_shape(tmp_path: Path) -> None:
    data = _data()
    cfg = load_config(None, [*RUN, "train.factor_at=0.5"])
    assert is_late(cfg)
    result = train(cfg, data, tmp_path / "late")
    state = json.loads((tmp_path / "late" / "checkpoint" / "state.json").read_text())
    switch = [h for h in state["history"] if h.get("factored")]
    assert [h["step"] for h in switch] == [6] and state["factored"] and state["done"]
    # the best is chosen among the factored student's evaluations only (the saved shape is the factored one)
    after = [h["val_auc"] for h in state["history"] if h["step"] >= 6]
    assert state["best_auc"] == max(after)
    loaded = load_model(result.model_dir)
    assert loaded.meta["arch"]["pw_ranks"] == RANKS
    assert _thin(loaded.encoder) == [i for i, r in enumerate(RANKS) if r]
    faces = data.images[:8]
    before = embed_array(loaded.encoder, faces, flip_tta=False)
    # resuming the finished run rebuilds the factored shape before loading its checkpoint
    again = train(cfg, data, tmp_path / "late", resume=True)
    np.testing.assert_allclose(embed_array(load_model(again.model_dir).encoder, faces, flip_tta=False), before,
                               atol=1e-5)


@pytest.mark.slow
def test_a_run_stopped_before_the_switch_still_saves_the_factored_shape(tmp_path: Path) -> None:
    def stop(info: dict) -> None:
        if info["step"] == 3:
            raise KeyboardInterrupt

    result = train(load_config(None, [*RUN, "train.factor_at=0.5"]), _data(), tmp_path / "stopped", on_step=stop)
    state = json.loads((tmp_path / "stopped" / "checkpoint" / "state.json").read_text())
    assert state["factored"] and not state["done"] and state["step"] == 3
    assert [h["step"] for h in state["history"] if h.get("factored")] == [3]
    assert _thin(load_model(result.model_dir).encoder) == [i for i, r in enumerate(RANKS) if r]


def test_the_factored_start_is_the_trained_weights_factored(tmp_path: Path) -> None:
    """At the switch, the thinner student computes nearly what the trained full-rank one did on training faces."""
    from pipeline.model.encoder import build_encoder
    from pipeline.model.inherit import inherit_sface, model_arch
    from pipeline.train.late_factoring import factor_trained
    from pipeline.train.loop import calibration_faces

    cfg = load_config(None, [*RUN, "train.factor_at=0.5"])
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=64, arch=full_rank_arch(model_arch(cfg)))
    inherit_sface(enc)
    with torch.no_grad():  # stand-in for training: move every weight away from the teacher's
        torch.manual_seed(0)
        for p in enc.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))
    images = np.random.default_rng(1).integers(0, 256, (48, 64, 64, 3), dtype=np.uint8)
    calib = calibration_faces(cfg, images, 0, n=32)
    enc.eval()
    with torch.no_grad():
        full = nn.functional.normalize(enc(calib), dim=1)
        factor_trained(enc, cfg, calib)
        thin = nn.functional.normalize(enc(calib), dim=1)
    assert _thin(enc) == [i for i, r in enumerate(RANKS) if r]
    assert float((full * thin).sum(1).mean()) > 0.9


@pytest.mark.parametrize("sets, match", [
    (["train.factor_at=1.0"], r"train.factor_at=1.0 is a share"),
    (["train.factor_at=0.5", "train.anchor_decay=0.1"], "cannot both be set"),
])
def test_config_refuses_factoring_that_cannot_happen(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"model.pw_ranks={json.dumps(RANKS)}", *sets])


def test_without_ranks_the_default_share_is_ignored_not_refused():
    # the default's factor_at (0.3) with the ranks cleared: a full-rank run, and the anchor is allowed again
    cfg = load_config(None, ["model.pw_ranks=", "train.anchor_decay=0.1"])
    assert cfg.train.factor_at == 0.3 and not is_late(cfg)
    with pytest.raises(ConfigError, match="set train.factor_at=0 to anchor"):
        load_config(None, ["train.anchor_decay=0.1"])  # the default's ranks are factored: no anchor
