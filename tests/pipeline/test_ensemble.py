"""Ensemble encoder: M members over one input, trained one after another, saved and loaded as one model."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import (
    backbone_spec,
    load_config,
    member_shares,
    parse_backbone,
)
from pipeline.core.errors import ConfigError
from pipeline.model.artifacts import (
    load_model,
    preprocessing_dict,
    read_model_meta,
    save_model,
)
from pipeline.model.encoder import (
    EnsembleEncoder,
    build_encoder,
    build_model,
    center_view,
)


def test_spec_parses_members_and_views_and_round_trips() -> None:
    assert parse_backbone("resnet10t") == [("resnet10t", 1.0)]
    specs = parse_backbone("resnet10t+test_resnet@0.85+test_resnet")
    assert specs == [("resnet10t", 1.0), ("test_resnet", 0.85), ("test_resnet", 1.0)]
    assert backbone_spec(specs) == "resnet10t+test_resnet@0.85+test_resnet"
    for bad, why in [("a++b", "empty member"), ("a@x", "not a number"), ("a@0.1", r"\[0.2, 1\]"), ("a@1.5", "0.2"),
                     ("a@0.55555", "3 decimals")]:
        with pytest.raises(ConfigError, match=why):
            parse_backbone(bad)
    with pytest.raises(ConfigError, match="one value per member"):
        load_config(None, ["model.backbone=test_resnet+test_resnet", "train.member_shares=1"])
    with pytest.raises(ConfigError, match="> 0"):
        load_config(None, ["model.backbone=test_resnet+test_resnet", "train.member_shares=1,0"])
    # the scratch recipe's shares belong to its ensemble; another spec without shares splits equally
    scratch = load_config(Path(__file__).resolve().parents[2] / "configs" / "scratch.toml")
    assert member_shares(scratch) == [2.6, 2.15, 1.0, 1.0, 1.0, 1.0] and len(parse_backbone(scratch.model.backbone)) == 6
    assert member_shares(load_config(None, [])) == [1.0]  # the default: one distilled network
    assert member_shares(load_config(None, ["model.backbone=resnet18"])) == [1.0]
    assert member_shares(load_config(None, ["model.backbone=a+b+c", "train.member_shares="])) == [1.0] * 3
    assert member_shares(load_config(None, ["model.backbone=a+b", "train.member_shares=3,1"])) == [3.0, 1.0]
    with pytest.raises(ConfigError, match="pretrained_file"):
        load_config(None, ["model.backbone=resnet18+test_resnet", "model.pretrained_file=w.safetensors"])


def test_ensemble_embedding_is_the_scaled_concat_and_its_cosine_the_mean() -> None:
    torch.manual_seed(0)
    ens = build_model("test_resnet+test_resnet@0.75", 8, input_px=32).eval()
    assert isinstance(ens, EnsembleEncoder) and ens.embedding_dim == 16
    x, y = torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32)
    ex, ey = ens.embed(x), ens.embed(y)
    torch.testing.assert_close(ex.norm(dim=1), torch.ones(5))
    a, b = ens.members
    torch.testing.assert_close(ex, torch.cat([a.embed(x), b.embed(x)], 1) / 2**0.5)
    member_cos = ((a.embed(x) * a.embed(y)).sum(1) + (b.embed(x) * b.embed(y)).sum(1)) / 2
    torch.testing.assert_close((ex * ey).sum(1), member_cos)
    # the Siamese form: both branches through the same members
    e1, e2 = ens(x, y)
    torch.testing.assert_close(e1, ex)
    torch.testing.assert_close(e2, ey)


def test_a_member_with_a_view_sees_only_the_centre() -> None:
    torch.manual_seed(0)
    m = build_encoder("test_resnet", 8, view=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    y = x.clone()
    y[..., :8, :] = 5.0  # outside the central 16 x 16
    y[..., :, 24:] = -5.0
    torch.testing.assert_close(m.embed(x), m.embed(y))
    assert center_view(x, 0.5).shape[-2:] == (16, 16)
    assert center_view(x, 1.0) is x
    full = build_encoder("test_resnet", 8, view=1.0).eval()
    full.load_state_dict(m.state_dict())
    assert not torch.allclose(full.embed(x), full.embed(y))


def _save(ens: torch.nn.Module, spec: str, path: Path) -> dict:
    return save_model(ens, path, backbone=spec, preprocessing=preprocessing_dict(0.5, 32, True),
                      thresholds={"far=0.001": 0.6}, default_far=1e-3, metrics={}, config={})


def test_ensemble_round_trip_and_views_change_the_version(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = "test_resnet+test_resnet@0.75"
    ens = build_model(spec, 8, input_px=32).eval()
    meta = _save(ens, spec, tmp_path / "a")
    loaded = load_model(tmp_path / "a")
    assert isinstance(loaded.encoder, EnsembleEncoder) and meta["embedding_dim"] == 16
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded.encoder.embed(x), ens.embed(x))
    # the same weights read as a different view are a different embedding space
    other = _save(ens, "test_resnet+test_resnet@0.8", tmp_path / "b")
    assert other["model_version"] != meta["model_version"]
    assert read_model_meta(tmp_path / "b")["backbone"] == "test_resnet+test_resnet@0.8"


FAST = ["data.face_detector=none", "distill.teacher=", "data.crop_fraction=0.64", "model.channels_last=false", "train.ema_decay=0.99", "data.image_size_px=32", "model.embedding_dim=16",
        "train.identities_per_batch=16", "data.val_fraction=0.25", "train.eval_every_steps=20"]


@pytest.mark.realdata
def test_members_train_in_turn_with_their_own_seeds_and_resume_skips_finished_ones(real_subset: Path,
                                                                                   tmp_path: Path) -> None:
    from pipeline.train.loop import train
    from pipeline.train.prepare import prepare_training

    cfg = load_config(None, FAST + ["model.backbone=test_resnet+test_resnet@0.75", "train.minutes=0.6",
                                    "train.member_shares=2,1"])
    data = prepare_training(real_subset, None, cfg)
    seen: list[int] = []

    def stop_member_1(info: dict) -> None:
        seen.append(info["member"])
        if info["member"] == 1 and info["step"] == 10:
            raise KeyboardInterrupt

    first = train(cfg, data, tmp_path / "m", on_step=stop_member_1)
    assert seen[0] == 0 and seen[-1] == 1 and sorted(set(seen)) == [0, 1] and seen == sorted(seen)
    members = first.meta["training"]["members"]
    assert [m["backbone"] for m in members] == ["test_resnet", "test_resnet"] and members[1]["view"] == 0.75
    assert members[1]["steps"] == 10 and members[0]["steps"] > 20
    assert first.meta["backbone"] == "test_resnet+test_resnet@0.75" and first.meta["embedding_dim"] == 32
    model = load_model(tmp_path / "m")
    emb = model.encoder.embed(torch.randn(4, 3, 32, 32))
    np.testing.assert_allclose(emb.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)

    steps: list[tuple[int, int]] = []
    second = train(cfg, data, tmp_path / "m", resume=True, on_step=lambda i: steps.append((i["member"], i["step"])))
    assert steps[0] == (1, 11)  # member 0 finished: skipped; member 1 continues where it stopped
    assert second.meta["training"]["members"][0]["steps"] == members[0]["steps"]


@pytest.mark.realdata
def test_member_i_starts_from_seed_plus_i(real_subset: Path, tmp_path: Path) -> None:
    from pipeline.train.loop import train
    from pipeline.train.prepare import prepare_training

    cfg = load_config(None, FAST + ["model.backbone=test_resnet+test_resnet", "train.member_shares=",
                                    "train.max_steps=1", "train.lr=1e-12", "train.seed=5"])
    data = prepare_training(real_subset, None, cfg)
    train(cfg, data, tmp_path / "m")
    members = load_model(tmp_path / "m").encoder.members
    for i, m in enumerate(members):  # one step at lr 1e-12: the weights are the initial ones
        torch.manual_seed(5 + i)
        fresh = build_encoder("test_resnet", 16, input_px=32)
        torch.testing.assert_close(m.head[0].weight, fresh.head[0].weight, atol=1e-6, rtol=0)
    assert not torch.allclose(members[0].head[0].weight, members[1].head[0].weight)


@pytest.mark.realdata
def test_ctrl_c_in_an_early_member_keeps_the_members_trained_so_far(real_subset: Path, tmp_path: Path) -> None:
    from pipeline.train.loop import train
    from pipeline.train.prepare import prepare_training

    cfg = load_config(None, FAST + ["model.backbone=test_resnet@0.75+test_resnet", "train.member_shares=",
                                    "train.minutes=0.5"])
    data = prepare_training(real_subset, None, cfg)

    def stop(info: dict) -> None:
        if info["step"] == 5:
            raise KeyboardInterrupt

    res = train(cfg, data, tmp_path / "m", on_step=stop)
    assert res.steps == 5 and res.meta["backbone"] == "test_resnet@0.75" and res.meta["embedding_dim"] == 16
    model = load_model(tmp_path / "m")  # one member with a view: a one-member ensemble
    assert isinstance(model.encoder, EnsembleEncoder) and len(model.encoder.members) == 1
    assert model.encoder.members[0].view == 0.75
    # resuming with a single-backbone config is refused, not silently started from scratch
    single = load_config(None, FAST + ["model.backbone=test_resnet", "train.minutes=0.5"])
    with pytest.raises(ConfigError, match="different config"):
        train(single, data, tmp_path / "m", resume=True)
