"""Factored pointwise convolutions (model.pw_ranks, pipeline/model/inherit.py): the student keeps every teacher layer,
thinner, and starts near the full-rank student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.core.config import load_config
from pipeline.core.sface_shape import pw_widths
from pipeline.core.errors import ConfigError
from pipeline.model import runtime
from pipeline.model.artifacts import load_model, save_model
from pipeline.model.embed import embed_array, to_input
from pipeline.model.encoder import build_encoder
from pipeline.model.inherit import blocks_of, factor_pointwise, inherit_sface, low_rank_pw

#: the ranks session 15 trained (71 million multiply-adds at 112 px, against 150 million; bench/factor_probe.py)
RANKS = [0, 0, 32, 48, 64, 96, 80, 80, 80, 80, 80, 160, 160]


def _arch(ranks=(), drop=()) -> dict:
    arch = {"shape": "sface", "stem_stride": 2, "drop_blocks": list(drop)}
    if any(ranks):
        arch["pw_ranks"] = list(ranks)
    return arch


def _student(px: int, calib: torch.Tensor | None, ranks=(), drop=()) -> nn.Module:
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=px, arch=_arch(ranks, drop))
    inherit_sface(enc, drop_blocks=tuple(drop), calib=calib)
    return enc.eval()


def _blocks(enc: nn.Module) -> list[nn.Module]:
    return blocks_of(enc.backbone)


def _random_faces(n: int, px: int, seed: int = 0) -> torch.Tensor:
    return to_input(np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8))


def test_shape_builds_thin_pairs_for_the_ranked_blocks_only():
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=64, arch=_arch(RANKS))
    for i, (blk, r) in enumerate(zip(_blocks(enc), RANKS)):
        cin, cout = pw_widths(i)
        if r:
            assert isinstance(blk.conv_pw, nn.Sequential)
            assert [c.weight.shape[:2] for c in blk.conv_pw] == [(r, cin), (cout, r)]
        else:
            assert isinstance(blk.conv_pw, nn.Conv2d) and blk.conv_pw.weight.shape[:2] == (cout, cin)
    # the rank index is SFace's block, also when blocks are left out
    ranks = [0] * 13
    ranks[9] = 64
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=64, arch=_arch(ranks, drop=(6, 8)))
    thin = [i for i, b in enumerate(_blocks(enc)) if isinstance(b.conv_pw, nn.Sequential)]
    assert thin == [7]  # SFace block 9 is the student's 8th once 6 and 8 are gone


def test_full_rank_factorisation_is_exact():
    """At rank = the layer's width the two convolutions multiply back to the teacher's weight."""
    calib = _random_faces(16, 64)
    enc = _student(64, None)
    blk = _blocks(enc)[6]
    w = blk.conv_pw.weight.detach().clone()[:, :, 0, 0]
    x = _random_faces(4, 64, seed=1)
    with torch.no_grad():
        before = enc(x)
    kept = factor_pointwise(enc, [(blk, 512)], calib)
    assert isinstance(blk.conv_pw, nn.Sequential) and kept[0] == pytest.approx(1.0)
    a, b = blk.conv_pw[1].weight[:, :, 0, 0], blk.conv_pw[0].weight[:, :, 0, 0]
    torch.testing.assert_close(a @ b, w, atol=2e-4 * float(w.abs().max()), rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), before, atol=1e-3, rtol=1e-3)
    assert not enc.training  # _student put it in eval; factoring leaves the mode as it found it


def test_factorisation_weighs_what_the_layer_receives():
    """On the calibration faces the data-aware factors leave less error after the BatchNorm than the plain SVD's."""
    calib = _random_faces(24, 64)
    enc = _student(64, None)
    blk = _blocks(enc)[7]
    conv = blk.conv_pw
    seen = []
    h = conv.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        enc(calib)
    h.remove()
    x = seen[0].transpose(0, 1).reshape(512, -1).double()
    w = conv.weight.detach()[:, :, 0, 0].double()
    d = (blk.bn2.weight / (blk.bn2.running_var + blk.bn2.eps).sqrt()).detach().double()[:, None]
    u, s, vt = torch.linalg.svd(w)
    plain = (u[:, :64] * s[:64]) @ vt[:64]
    factor_pointwise(enc, [(blk, 64)], calib)
    ab = (blk.conv_pw[1].weight[:, :, 0, 0] @ blk.conv_pw[0].weight[:, :, 0, 0]).detach().double()
    err = lambda approx: float(torch.linalg.norm(d * (w - approx) @ x))  # noqa: E731
    assert err(ab) < 0.5 * err(plain), (err(ab), err(plain))


def _bn2_input(enc: nn.Module, idx: int, x: torch.Tensor) -> torch.Tensor:
    """What block ``idx``'s second BatchNorm receives (its pointwise convolution's output) on faces ``x``."""
    seen = []
    h = _blocks(enc)[idx].bn2.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach()))
    with torch.no_grad():
        enc(x)
    h.remove()
    return seen[0]


def test_sequential_factoring_corrects_the_error_of_the_layers_before():
    """Factored in sequence (``sequential=True``, measured in session 16, not the default), the last of three thin
    layers gives its BatchNorm more nearly what the full-rank network gives it, on the faces fitted, than when every
    layer is fitted on the full network's inputs; the first layer's factors are the same either way."""
    calib = _random_faces(24, 64)
    full = _student(64, None)
    target = _bn2_input(full, 8, calib)
    err = {}
    for sequential in (False, True):
        enc = _student(64, None)
        blocks = _blocks(enc)
        factor_pointwise(enc, [(blocks[i], 48) for i in (6, 7, 8)], calib, sequential=sequential)
        err[sequential] = float(torch.linalg.norm(_bn2_input(enc, 8, calib) - target))
        err[(sequential, "first")] = (blocks[6].conv_pw[1].weight[:, :, 0, 0] @ blocks[6].conv_pw[0].weight[:, :, 0, 0])
    assert err[True] < 0.9 * err[False], err
    torch.testing.assert_close(err[(True, "first")], err[(False, "first")], atol=1e-5, rtol=1e-4)


def test_inheriting_factored_weights_needs_calibration_faces():
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=64, arch=_arch(RANKS))
    with pytest.raises(ConfigError, match="calibration faces"):
        inherit_sface(enc)


@pytest.mark.realdata
def test_factored_student_starts_near_the_full_one(lfw_root):
    """Session 15's ranks at 112 px, factored on 48 LFW faces: on 24 other people's faces the untrained student's
    embeddings stay close to the full-rank student's, and much closer than leaving blocks 6-10 out."""
    from pipeline.faces import AlignerConfig, FaceAligner

    aligner = FaceAligner(AlignerConfig(mode="query"))
    people = sorted(p for p in lfw_root.iterdir() if p.is_dir())[:400:5]
    crops = [o.crop for o in (aligner.align_path(next(iter(sorted(p.glob("*.jpg"))))) for p in people) if o.accepted]
    assert len(crops) >= 72
    x = to_input(np.stack(crops[:72]))
    calib, test = x[:48], x[48:72]
    with torch.no_grad():
        full = nn.functional.normalize(_student(112, None)(test), dim=1)
        thin = nn.functional.normalize(_student(112, calib, RANKS)(test), dim=1)
        short = nn.functional.normalize(_student(112, None, drop=(6, 7, 8, 9, 10))(test), dim=1)
    cos_thin, cos_short = (full * thin).sum(1), (full * short).sum(1)
    assert float(cos_thin.mean()) > 0.8, cos_thin
    assert float(cos_thin.mean()) > float(cos_short.mean()) + 0.1, (cos_thin.mean(), cos_short.mean())


@pytest.mark.parametrize("ranks, extra, match", [
    (RANKS[:12], {}, "one rank per SFace block"),
    ([0] * 6 + [256] + [0] * 6, {}, r"block 6 \(512 -> 512 channels\) takes a rank in \[1, 255\]"),
    ([0] * 12 + [-1], {}, "block 12"),
    ([0] * 7 + [64] + [0] * 5, {"model.drop_blocks": [7]}, "block 7 is left out"),
    (RANKS, {"model.inherit": "", "model.stem_stride": 1}, "needs model.inherit='sface'"),
])
def test_config_refuses_ranks_that_cannot_be_built(ranks, extra, match):
    sets = [f"model.pw_ranks={json.dumps(ranks)}"] + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                      for k, v in extra.items()]
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides=sets)


def test_saved_factored_student_reloads_and_runs_in_opencv(tmp_path, monkeypatch):
    calib = _random_faces(16, 64)
    enc = _student(64, calib, RANKS)
    pre = {"crop_fraction": 1.0, "image_size_px": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "flip_tta": False,
           "color": "RGB"}
    meta = save_model(enc, tmp_path / "m", backbone="mobilenetv1_100", head="flatten", preprocessing=pre,
                      thresholds={"far=0.001": 0.5}, default_far=1e-3, metrics={}, config={}, arch=_arch(RANKS))
    assert meta["arch"]["pw_ranks"] == RANKS
    loaded = load_model(tmp_path / "m")
    x = _random_faces(3, 64, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x), enc(x))
    faces = np.random.default_rng(3).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    monkeypatch.setenv(runtime.ENV, "torch")
    ref = embed_array(loaded.encoder, faces, flip_tta=False)
    monkeypatch.setenv(runtime.ENV, "opencv")
    got = embed_array(loaded.encoder, faces, flip_tta=False)
    assert runtime._cache[loaded.encoder][1] is not None  # it ran in OpenCV: the folded pairs exported
    np.testing.assert_allclose(got, ref, atol=runtime.TOLERANCE)


def test_low_rank_pw_has_fewer_weights_than_the_full_convolution():
    for i in range(13):
        cin, cout = pw_widths(i)
        most = (cin * cout - 1) // (cin + cout)
        assert sum(p.numel() for p in low_rank_pw(cin, cout, most).parameters()) < cin * cout


def test_calibration_faces_are_a_seeded_sample_of_training_faces():
    from pipeline.train.loop import calibration_faces

    cfg = load_config(None, ["data.image_size_px=64"])
    images = np.random.default_rng(0).integers(0, 256, (40, 80, 80, 3), dtype=np.uint8)
    a, b = calibration_faces(cfg, images, 7, n=16), calibration_faces(cfg, images, 7, n=16)
    assert a.shape == (16, 3, 64, 64) and torch.equal(a, b)
    assert not torch.equal(a, calibration_faces(cfg, images, 8, n=16))
    assert calibration_faces(cfg, images, 7, n=100).shape[0] == 40  # never more than there are


def test_default_is_ranks_f_factored_part_way_and_accurate_config_is_the_full_shape():
    from pathlib import Path

    default = load_config(None)
    # ranks F factored at 0.3 of the schedule, trained for the hour in session 18 (runs/i60f03: 5.1-5.2x the
    # teacher's images/s for this shape, dev accuracy 0.970, validation AUC 0.9975)
    assert default.model.pw_ranks == (0, 0, 32, 0, 64, 0, 96, 96, 96, 96, 96, 0, 192)
    assert default.train.factor_at == 0.3
    accurate = load_config(Path(__file__).resolve().parents[3] / "configs" / "accurate.toml")
    # session 13's full-rank student (runs/i60v8: dev accuracy 0.983 at 3.5-3.9x): nothing else differs
    assert accurate == load_config(None, ["model.pw_ranks=", "train.factor_at=0"])
    assert accurate != default and not accurate.model.pw_ranks


def test_a_backbone_that_does_not_inherit_sface_keeps_its_full_shape():
    # the default's ranks belong to SFace's blocks: another backbone (or the scratch config) drops them silently,
    # the default backbone without inheriting is refused in one line that says what to set
    assert load_config(None, ["model.backbone=resnet10t"]).model.pw_ranks == ()
    assert load_config(None, ["model.backbone=resnet10t"]).train.factor_at == 0.0
    with pytest.raises(ConfigError, match=r"without inheriting, set model.pw_ranks=\[\]"):
        load_config(None, ["model.inherit=", "model.stem_stride=1"])
    # ... and clearing the ranks alone gives a full-rank run (the default's factor_at has nothing to factor)
    from pipeline.train.late_factoring import is_late
    plain = load_config(None, ["model.inherit=", "model.stem_stride=1", "model.pw_ranks="])
    assert not plain.model.pw_ranks and not is_late(plain) and is_late(load_config(None))
    # leaving a block out of the default (whose ranks factor it) says how to keep the full shape
    with pytest.raises(ConfigError, match=r"model.pw_ranks=\[\] keeps every block at full rank"):
        load_config(None, ["model.drop_blocks=[6]"])
    assert load_config(None, ["model.drop_blocks=[6]", "model.pw_ranks="]).model.drop_blocks == (6,)
