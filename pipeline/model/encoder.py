"""The Siamese encoder: ONE timm backbone + embedding head, shared by every branch.

``forward(x1, x2)`` runs both inputs through the very same modules (one parameter set), so the
gradient of a loss on the pair reaches the shared weights from both branches.

An :class:`EnsembleEncoder` is still one shared encoder: M members (each a backbone + head, trained
one after another) embed the same input and their unit embeddings are concatenated, so the cosine of
two ensemble embeddings is the mean of the members' cosines. ``model.backbone`` names the members
joined by ``+``; ``name@v`` makes a member look at the central ``v`` fraction of the input only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import backbone_spec, parse_backbone  # noqa: F401  (re-exported)
from pipeline.core.errors import ConfigError, ModelArtifactError
from pipeline.model.inherit import shape_head, shape_student

log = logging.getLogger(__name__)

# Inputs are scaled to [-1, 1]; stored in model.json so that every consumer preprocesses alike.
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)


HEADS = ("gap", "flatten")


def center_view(x: torch.Tensor, view: float) -> torch.Tensor:
    """The central ``view`` fraction (per side) of images (B, C, H, W); ``view == 1`` returns ``x``."""
    if view >= 1.0:
        return x
    h, w = x.shape[-2:]
    sh, sw = max(1, round(h * view)), max(1, round(w * view))
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    return x[..., y0 : y0 + sh, x0 : x0 + sw]


class _TwoBranch(nn.Module):
    """``forward``: the Siamese form (two inputs through the same ``embed``) or one input."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Both branches through the same weights: (B, 3, H, W) x 2 -> two (B, D) embeddings.

        With one input, returns its embedding (the single-branch form used for batched embedding).
        The two inputs are concatenated into one batch: identical to two calls, but one pass.
        """
        if x2 is None:
            return self.embed(x1)
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(f"both branches need the same image shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        both = self.embed(torch.cat([x1, x2], dim=0))
        return both[: x1.shape[0]], both[x1.shape[0] :]


class SiameseEncoder(_TwoBranch):
    """timm backbone -> embedding head -> L2 normalise (after cropping the input to ``view``).

    Heads: ``gap`` = global average pool -> Linear -> BatchNorm1d. ``flatten`` keeps the spatial layout of
    the last feature map (aligned faces put eyes and mouth at fixed places): BatchNorm2d -> Dropout ->
    Flatten -> Linear -> BatchNorm1d, the "E" output layer of ArcFace (Deng et al., 2019).
    """

    def __init__(self, backbone: nn.Module, num_features: int, embedding_dim: int, *,
                 head: str = "gap", feature_shape: tuple[int, ...] | None = None, dropout: float = 0.0,
                 view: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.view = float(view)
        self.head_type = head
        if head == "gap":
            self.head = nn.Sequential(nn.Linear(num_features, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        elif head == "flatten":
            if not feature_shape:
                raise ConfigError("model.head='flatten' needs the backbone's feature map shape")
            norm: nn.Module = nn.BatchNorm2d(feature_shape[0]) if len(feature_shape) == 3 else nn.BatchNorm1d(feature_shape[0])
            flat = int(torch.tensor(feature_shape).prod())
            self.head = nn.Sequential(norm, nn.Dropout(dropout), nn.Flatten(),
                                      nn.Linear(flat, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        else:
            raise ConfigError(f"model.head={head!r} is not one of {list(HEADS)}")
        self.embedding_dim = embedding_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images float (B, 3, H, W), normalised -> embeddings float32 (B, D), unit L2 norm."""
        return F.normalize(self.head(self.backbone(center_view(x, self.view))).float(), dim=1)


class EnsembleEncoder(_TwoBranch):
    """Members embed the same input; output = concat of their unit embeddings / sqrt(M) (unit norm).

    The cosine of two outputs is the mean of the members' cosines.
    """

    def __init__(self, members: Sequence[SiameseEncoder]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.embedding_dim = sum(m.embedding_dim for m in members)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        parts = [m.embed(x) for m in self.members]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))


Encoder = SiameseEncoder | EnsembleEncoder  # what a model artefact holds


def build_model(backbone: str, embedding_dim: int, *, pretrained: bool = False, pretrained_file: str | None = None,
                head: str = "gap", input_px: int | None = None, dropout: float = 0.0,
                arch: dict[str, Any] | None = None) -> SiameseEncoder | EnsembleEncoder:
    """The encoder a ``model.backbone`` spec names: one :class:`SiameseEncoder`, or an
    :class:`EnsembleEncoder` of one per ``+``-joined member (each ``embedding_dim`` wide)."""
    specs = parse_backbone(backbone)
    if len(specs) == 1 and specs[0][1] == 1.0:
        return build_encoder(specs[0][0], embedding_dim, pretrained=pretrained, pretrained_file=pretrained_file,
                             head=head, input_px=input_px, dropout=dropout, arch=arch)
    if arch:
        raise ConfigError("an SFace-shaped student (model.inherit) is one network, not an ensemble")
    return EnsembleEncoder([build_encoder(name, embedding_dim, pretrained=pretrained, pretrained_file=pretrained_file,
                                          head=head, input_px=input_px, dropout=dropout, view=view)
                            for name, view in specs])


def build_encoder(backbone: str, embedding_dim: int, *, pretrained: bool = False,
                  pretrained_file: str | None = None, head: str = "gap", input_px: int | None = None,
                  dropout: float = 0.0, view: float = 1.0, arch: dict[str, Any] | None = None) -> SiameseEncoder:
    """Create the encoder from any timm model name.

    Args:
        backbone: a timm model name (``timm.list_models()``), e.g. ``resnet18``, ``test_resnet``.
        view: the central fraction of the input the encoder looks at (1 = all of it).
        pretrained: load the backbone's published weights through timm (needs the hub or its cache).
        pretrained_file: load backbone weights from this local safetensors file
            instead of the hub; implies ``pretrained``.
        head: ``gap`` (pooled features) or ``flatten`` (spatial feature map; needs ``input_px``).
        input_px: the square input size the ``flatten`` head is built for.
        dropout: dropout before the ``flatten`` head's Linear layer.
        arch: ``{"shape": "sface", "stem_stride": s, "drop_blocks": [...], "pw_ranks": [...]}`` reshapes a
            ``mobilenetv1_100`` as the SFace teacher (`pipeline.model.inherit.shape_student`); model.json keeps it
            as ``arch``.
    Raises:
        ConfigError: unknown backbone (the message lists close matches).
        ModelArtifactError: the weights file is missing or does not fit the backbone.
    """
    if not timm.is_model(backbone):
        stem = backbone.split("_")[0][:4]
        close = timm.list_models(f"*{stem}*")[:12] if stem else []
        raise ConfigError(f"unknown timm backbone {backbone!r}; close matches: {close or timm.list_models()[:12]}")
    if head not in HEADS:
        raise ConfigError(f"model.head={head!r} is not one of {list(HEADS)}")
    if head == "flatten" and not input_px:
        raise ConfigError("model.head='flatten' needs the input size (data.image_size_px)")
    kwargs: dict[str, object] = {"num_classes": 0}
    if head == "flatten":
        kwargs["global_pool"] = ""
    if pretrained_file:
        p = Path(pretrained_file)
        if not p.is_file():
            raise ModelArtifactError(f"backbone weights file {p} does not exist")
        if p.suffix not in (".safetensors",):
            raise ModelArtifactError(f"backbone weights file {p}: only .safetensors files are loaded (no pickle)")
        kwargs["pretrained_cfg_overlay"] = {"file": str(p), "num_classes": 0}
        pretrained = True
    try:
        net = timm.create_model(backbone, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:  # shape / key mismatch in the weights file
        raise ModelArtifactError(f"weights do not fit backbone {backbone!r}: {exc}") from exc
    if arch:
        if arch.get("shape") != "sface":
            raise ConfigError(f"unknown architecture shape {arch.get('shape')!r}; known: ['sface']")
        shape_student(net, stem_stride=int(arch.get("stem_stride", 1)),
                      drop_blocks=tuple(int(b) for b in arch.get("drop_blocks", ())),
                      pw_ranks=tuple(int(r) for r in arch.get("pw_ranks", ())))
    # with num_classes=0 some models (MobileNetV3, GhostNet, LCNet) end in a conv head wider than
    # ``num_features``: timm names the pooled width ``head_hidden_size`` there
    num_features = int(getattr(net, "head_hidden_size", None) or getattr(net, "num_features"))
    feature_shape = None
    if head == "flatten":
        was_training = net.training
        with torch.no_grad():
            px = max(1, round(int(input_px) * view))
            feature_shape = tuple(int(d) for d in net.eval()(torch.zeros(1, 3, px, px)).shape[1:])
        net.train(was_training)
    log.debug("backbone %s: %d features, head %s %s, pretrained=%s", backbone, num_features, head, feature_shape,
              pretrained)
    encoder = SiameseEncoder(net, num_features, embedding_dim, head=head, feature_shape=feature_shape, dropout=dropout,
                             view=view)
    if arch:
        shape_head(encoder)
    return encoder
