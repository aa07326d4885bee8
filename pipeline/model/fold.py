"""Inference copies of an encoder with every BatchNorm folded into the convolution that feeds it.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution with scaled
weights and a bias. Folding removes one memory pass per convolution: 466 against 317 faces per second (1.47x,
both in batches of 32) on two CPU cores for the inherited MobileNet student at 96 px (`bench/fold_speed.py`;
docs/benchmarks.md, "Embedding path: BatchNorm folding and batch size").

Invariants:
- The training encoder is never changed: `inference_copy` folds a deep copy.
- A pair is folded only where the data flow says so: one forward pass with hooks records which convolution's
  output tensor *is* a BatchNorm's input. Names are not trusted (timm pairs conv_dw with bn1 in one block type
  and with bn2 in another).
- The copy is checked against the encoder on a probe batch before use; when they differ by more than 1e-4
  (cosine, unit embeddings) the encoder itself is used, so folding can make embedding faster, never different.
- The cache follows the weights: the key holds every parameter's and buffer's in-place version counter, so an
  optimiser step or ``load_state_dict`` invalidates the copy (the training loop evaluates mid-run).
"""

from __future__ import annotations

import copy
import logging
import weakref

import torch
from torch import nn

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module | None]] = weakref.WeakKeyDictionary()  # None: unfolded


class _AfterNorm(nn.Module):
    """What a folded BatchNorm still does: timm's BatchNormAct2d applies dropout and an activation after the norm."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) where the BatchNorm's input is the convolution's output tensor, from one forward."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}  # id(conv output) -> conv name
    outputs: list[torch.Tensor] = []  # keep the outputs alive so ids stay unique during the pass
    pairs: list[tuple[str, str]] = []
    consumers: dict[str, int] = {}

    def conv_hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        produced[id(out)] = names[mod]
        outputs.append(out)

    def bn_hook(mod: nn.Module, inp: tuple) -> None:
        conv = produced.get(id(inp[0]))
        if conv is not None:
            pairs.append((conv, names[mod]))
            consumers[conv] = consumers.get(conv, 0) + 1

    hooks = []
    for mod in model.modules():
        if type(mod) is nn.Conv2d:
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.BatchNorm2d) and mod.track_running_stats and mod.running_var is not None:
            hooks.append(mod.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    # a module called twice (shared) or a conv feeding two norms cannot be folded in place
    return [(c, b) for c, b in pairs if consumers[c] == 1 and sum(b == other for _, other in pairs) == 1]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> int:
    """Fold, in place, each BatchNorm2d fed directly by a Conv2d (model in eval mode). Returns the number folded."""
    pairs = _conv_bn_pairs(model, probe)
    for conv_name, bn_name in pairs:
        conv: nn.Conv2d = model.get_submodule(conv_name)
        bn: nn.BatchNorm2d = model.get_submodule(bn_name)
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(shift + (conv.bias * scale if conv.bias is not None else 0))
        _set(model, conv_name, fused)
        _set(model, bn_name, _AfterNorm(bn))
    return len(pairs)


def weights_key(encoder: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or updated in place (pointer + version counter)."""
    return tuple((t.data_ptr(), t._version) for t in (*encoder.parameters(), *encoder.buffers()))


def inference_copy(encoder: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A BN-folded eval copy of ``encoder`` with the same ``embed`` (cached while the weights are unchanged).

    ``probe``: a normalised input batch of the encoder's input shape (2+ images), used to trace the conv -> norm
    pairs and to check the copy. Falls back to ``encoder`` when nothing folds or the check fails.
    """
    key = weights_key(encoder)
    hit = _cache.get(encoder)
    if hit is not None and hit[0] == key:
        return encoder if hit[1] is None else hit[1]
    was_training = encoder.training
    encoder.eval()
    try:
        folded = copy.deepcopy(encoder).eval()
        n = fold_batchnorm(folded, probe)
        folded.eval()  # the fused convolutions and _AfterNorm wrappers are new modules (train mode by default)
        with torch.inference_mode():
            gap = (encoder.embed(probe) - folded.embed(probe)).abs().max().item() if n else 0.0
    finally:
        encoder.train(was_training)
    if n == 0 or gap > TOLERANCE:
        if n:
            log.warning("BatchNorm folding changed embeddings by %.2g (> %g); embedding with the unfolded encoder",
                        gap, TOLERANCE)
        _cache[encoder] = (key, None)  # never the encoder itself: the cache must not keep its key alive
        return encoder
    _cache[encoder] = (key, folded)
    return folded
