"""Configuration: ONE loader for every frozen-dataclass tree, and the pipeline's own tree (`Config`).

The loader (`pipeline.core.loader`: `read_toml` -> `apply_overrides` -> `build_dataclass`) turns a TOML file plus ``section.key=value``
strings into a frozen dataclass tree, coercing each value to its field's annotated type and rejecting unknown
keys with the list of valid ones. The pipeline config (`load_config`) and the flows' operator settings
(`flows.settings.load_settings`) both use it. (A gallery store's `indexes.IndexConfig` is read only from the
store's own manifest, by `indexes`, the bottom layer, which imports nothing of `pipeline`.)
Units are in the field names (``_px``, ``_minutes``, ``_rad``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.errors import ConfigError
from pipeline.core.loader import apply_overrides, build_dataclass, read_toml
from pipeline.core.sface_shape import check_pw_ranks

T = TypeVar("T")


@dataclass(frozen=True)
class DataConfig:
    """Where faces come from and how they are split."""

    crop_fraction: float = 1.0  # central square crop of the aligned face (of the photo's shorter side without alignment)
    # network input size (ensemble members may look at its centre only: model.backbone). 112: the default recipe's
    # (5.6x the teacher's speed, TAR@1e-3 0.82; 104 px: 6.1x, 0.79; 96 px: 7.7x, 0.67); another backbone
    # defaults to 80 (OTHER_BACKBONE_DEFAULTS)
    image_size_px: int = 112
    dev_folds: tuple[int, ...] = (6, 7)  # 1-based folds of the pairs file never trained on
    val_folds: tuple[int, ...] = (5,)  # folds whose people are held out for checkpoint choice + calibration
    val_fraction: float = 0.1  # fraction of multi-image identities held out for validation (no val folds)
    val_source: str = "train"  # folds: people of val_folds validate | train: a val_fraction slice of train people
    # training people with fewer photos are not used at all; 1 keeps single-image people (classes for margin losses,
    # images for distillation)
    min_images_per_identity: int = 1
    # faces: "yunet" detects 5 landmarks and aligns every photo to the ArcFace template (aligned_px) before the
    # central crop above; "none" takes the central crop of the photo itself (photos framed like LFW's)
    face_detector: str = "yunet"
    aligned_px: int = 112
    cache_dir: str = ""  # aligned crops and teacher embeddings ("" = $FACEPIPE_CACHE or ~/.cache/facepipe)


# The default student's ranks (one per SFace block conv_2 .. conv_14; 0 = full): "ranks F" of docs/training.md
RANKS_F = (0, 0, 32, 0, 64, 0, 96, 96, 96, 96, 96, 0, 192)


@dataclass(frozen=True)
class ModelConfig:
    """The shared encoder: timm backbone + embedding head."""

    # one timm name, or an ensemble: members joined by "+", "name@v" = the member sees the central v of the input.
    # Default: timm's mobilenetv1_100 shaped as SFace, started from the SFace teacher's weights and distilled from it
    # on aligned faces (docs/training.md). Naming another backbone also resets the recipe's own settings
    # (OTHER_BACKBONE_DEFAULTS); the from-scratch six-member ensemble is configs/scratch.toml
    backbone: str = "mobilenetv1_100"
    pretrained: bool = False
    pretrained_file: str | None = None  # local backbone weights (a safetensors file; nothing else is accepted)
    embedding_dim: int = 128
    channels_last: bool = True  # NHWC: +10-50 % training throughput on this CPU for every backbone measured
    head: str = "flatten"  # gap: pooled features | flatten: the spatial feature map (ArcFace's "E" layer)
    head_dropout: float = 0.0  # flatten head: dropout before its Linear layer
    # "sface": start from the SFace teacher's own weights (needs backbone mobilenetv1_100, head flatten,
    # embedding_dim 128: SFace's architecture; pipeline/model/inherit.py). "" = timm's initialisation.
    inherit: str = "sface"
    stem_stride: int = 2  # with inherit: 2 halves every feature map after the stem (~4x fewer multiply-adds)
    drop_blocks: tuple[int, ...] = ()  # with inherit: which of SFace's 512-wide blocks (6..10) to leave out
    freeze_blocks: int = 0  # with inherit: the last N blocks keep the teacher's weights (not trained)
    # with inherit: one rank per SFace block (13, 0 = full): its 1x1 convolution becomes two thinner ones
    # (C_in -> r -> C_out) factored on training faces (pipeline/model/inherit.py). Default: ranks F, 7 blocks thinner,
    # >= 5x the teacher's images/s (docs/training.md, "Session 18"); () = the full shape (configs/accurate.toml)
    pw_ranks: tuple[int, ...] = RANKS_F


@dataclass(frozen=True)
class LossConfig:
    """Which loss trains the encoder."""

    name: str = "triplet"  # contrastive | triplet | multi-similarity | arcface | cosface
    contrastive_margin: float = 1.0  # Euclidean margin on unit vectors (0..2] impostors are pushed beyond
    triplet_margin: float = 0.3  # d(a, n) must exceed d(a, p) by this much
    angular_margin_rad: float = 0.3  # arcface
    cosine_margin: float = 0.35  # cosface
    scale: float = 30.0  # margin-softmax logit scale
    mining: str = "batch-hard"  # triplet: batch-hard | semi-hard | all
    triplet_weight: float = 0.0  # arcface/cosface: add this times a triplet term (mixed loss); 0 = off


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the time budget."""

    # + ~1-2 min of decoding, teacher cache and saving: `facepipe train` stays within 60 min (the first run on a
    # machine also computes the teacher's embeddings and views of the training faces once: ~11 min, then cached)
    minutes: float = 57.0
    max_epochs: int = 1000
    max_steps: int = 0  # cap on optimiser steps (0 = none): equal-compute ablations on a shared machine
    identities_per_batch: int = 32  # P in P x K sampling
    images_per_identity: int = 2  # K
    lr: float = 2e-4  # a start from the teacher's weights: 5e-4 or more overwrites what it inherits (2e-3 otherwise)
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    eval_every_steps: int = 500
    seed: int = 0
    augment: bool = True
    augment_rotation_deg: float = 8.0  # random in-plane rotation up to +- this (0 = off)
    augment_scale: float = 0.08  # random zoom in [1 - s, 1 + s] (0 = off)
    augment_erase: float = 0.0  # probability of erasing a random rectangle (2-20 % of the face) per image
    augment_gray: float = 0.0  # probability of turning an image grey
    # aligned faces: probability that an image's surroundings (outside the face ellipse) are another image's.
    # 1.0 cuts the one-shot gap between raw and framed enrolment photos from 12.1 to 2.7 points (docs/training.md)
    augment_background: float = 1.0
    sampler_min_images: int = 2  # metric losses: people with fewer than K (but >= this) images are drawn with repeats
    # ensemble: each member's share of the time budget (empty = equal). The default belongs to the default
    # ensemble: left at its default with a spec of ANOTHER number of members, members share equally
    member_shares: tuple[float, ...] = ()
    ema_decay: float = 0.999  # exponential moving average of the weights, evaluated and saved instead (0 = off)
    # after each step, weights move lr * anchor_decay of the way back to their start (the teacher's with
    # model.inherit; L2-SP, `pipeline.train.schedule.AnchorPull`); 0 = off
    anchor_decay: float = 0.0
    # with model.pw_ranks: train the full-rank student first and factor ITS 1x1 convolutions (on training faces) at
    # this share of the schedule, then train on (`pipeline.train.late_factoring`); 0 = factor the teacher's at start;
    # without model.pw_ranks there is nothing to factor and it is ignored.
    # 0.3: validation AUC 0.9975 after the switch against 0.9923-0.9953 at 0.5 (docs/training.md, "Session 18")
    factor_at: float = 0.3
    threads: int = 0  # 0: torch default
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda[:N] | mps
    amp: str = "auto"  # autocast: auto (bf16/fp16 on accelerators, off on the CPU) | bf16 | fp16 | off
    loader_workers: int = 2  # accelerators: processes making augmented batches into pinned memory (CPU: in-process)


CENTRE_MODES = ("auto", "on", "off")  # distill.centre_teacher
VIEWS_AUTO = 8  # distill.views=-1 (auto): this many teacher views per training image ...
VIEWS_AUTO_MIN_MINUTES = 20.0  # ... when train.minutes is at least this (at 20: TAR@1e-3 0.802 -> 0.847, docs/training.md)


@dataclass(frozen=True)
class DistillConfig:
    """Distillation from a frozen teacher face model (`pipeline.model.teachers`); off when ``teacher`` is empty."""

    teacher: str = "sface"  # "" (off) | sface | dlib | precomputed (then teacher_file = a Parquet keyed by image_sha256)
    teacher_file: str = ""  # precomputed teacher: the Parquet of embeddings
    workers: int = 2  # processes computing missing teacher embeddings
    cosine_weight: float = 1.0  # per image: 1 - cos(projected student, teacher)
    relation_weight: float = 1.0  # the batch's student vs teacher similarity matrices (mean squared difference)
    # the teacher's neighbourhood over all training images (KL of softmax similarities): off for the inherited
    # student (session 19: TAR@1e-3 0.87 -> 0.92-0.94 without it); on for other backbones (OTHER_BACKBONE_DEFAULTS)
    bank_weight: float = 0.0
    bank_temperature: float = 0.1  # softmax temperature of that term: small = the nearest neighbours count most
    # "auto": subtract the training images' mean teacher embedding (then re-normalise) when that mean's norm is
    # >= 0.5 (dlib's: 0.914, SFace's: 0.295; `pipeline.train.teacher_targets.centre_teacher`) | on | off
    centre_teacher: str = "auto"
    bank_size: int = 65536  # at most this many training images in the bank (a seeded sample beyond): cost per step
    metric_weight: float = 0.0  # the configured metric loss (loss.name) on the labelled P x K part of each batch
    extra_per_batch: int = 64  # images drawn from the whole pool (single-image and unlabelled too) per batch
    unlabelled: str = ""  # an extra folder or manifest of images without identities, used for distillation only
    # teacher views (`pipeline.train.teacher_views`): this many augmented views of every training image (half of
    # them blended with another face) embedded by the teacher itself and cached; 0 = off (model teachers only).
    # -1 = auto: VIEWS_AUTO views when the budget (train.minutes) is at least VIEWS_AUTO_MIN_MINUTES, else none.
    # 8 views of the 6,895 training faces cost ~10 minutes of SFace time once (then cached); in the 57-minute run
    # they lifted dev accuracy 0.962 -> 0.983, AUC 0.9939 -> 0.9979, TAR@1e-3 0.822 -> 0.895 (docs/training.md,
    # session 13), while a few-minute budget (the demo, the shipped retrain flow) cannot repay them
    views: int = -1
    view_fraction: float = 0.5  # the share of each batch's images served as teacher views instead of the usual augmentation


@dataclass(frozen=True)
class EvalConfig:
    """Verification metrics and calibration."""

    target_fars: tuple[float, ...] = (1e-3, 1e-2)
    default_far: float = 1e-3  # threshold used by verify/identify unless the user names one
    # embed the image and its mirror and average: AUC +0.001-0.005, TAR@1e-3 +0.011-0.018 on the dev folds at half
    # the speed, which puts the student below 5x the teacher's images/s (docs/training.md, docs/benchmarks.md)
    flip_tta: bool = False


@dataclass(frozen=True)
class Config:
    """Root of the configuration tree."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# The default recipe's settings that belong to its backbone (a start from SFace's weights). A config that names
# another backbone and leaves one of these unset gets the value here: what a network from timm's initialisation
# was measured with (docs/training.md), e.g. `--set model.backbone=resnet10t` is session 6's distilled default.
OTHER_BACKBONE_DEFAULTS: dict[tuple[str, str], Any] = {
    ("model", "inherit"): "", ("model", "head"): "gap", ("model", "stem_stride"): 1,
    ("data", "image_size_px"): 80, ("train", "lr"): 2e-3,
    # teacher views helped the inherited student (session 13) but cost a resnet10t from timm's initialisation
    # TAR@1e-3 (0.52 -> 0.37 at 20 minutes, session 7)
    ("distill", "views"): 0,
    # the neighbourhood term lifted a resnet10t's TAR@1e-3 (0.435 -> 0.532 at 20 minutes, session 6)
    ("distill", "bank_weight"): 1.0,
    # factoring acts on SFace's blocks: a network that does not inherit them keeps its full shape
    ("model", "pw_ranks"): (), ("train", "factor_at"): 0.0,
}


def with_backbone_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (nested dicts) with `OTHER_BACKBONE_DEFAULTS` filled in when they name a non-default backbone."""
    backbone = values.get("model", {}).get("backbone", ModelConfig.backbone)
    if str(backbone).strip() == ModelConfig.backbone:
        return values
    out = {section: dict(v) if isinstance(v, dict) else v for section, v in values.items()}
    for (section, key), value in OTHER_BACKBONE_DEFAULTS.items():
        if isinstance(out.setdefault(section, {}), dict):
            out[section].setdefault(key, value)
    return out


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from nested dicts (unknown keys are errors).

    A non-default ``model.backbone`` brings `OTHER_BACKBONE_DEFAULTS` for the keys ``values`` leave unset.
    """
    cfg = build_dataclass(Config, with_backbone_defaults(values), "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-able dicts (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a TOML file, then ``section.key=value`` overrides."""
    values = read_toml(path) if path is not None else {}
    return config_from_dict(apply_overrides(values, overrides or []))


def parse_backbone(spec: str) -> list[tuple[str, float]]:
    """``"resnet10t+test_resnet@0.85"`` -> ``[("resnet10t", 1.0), ("test_resnet", 0.85)]``.

    Raises:
        ConfigError: an empty member or a view outside [0.2, 1].
    """
    members = []
    for part in str(spec).split("+"):
        name, _, view = part.strip().partition("@")
        if not name:
            raise ConfigError(f"model.backbone={spec!r}: empty member name (members are joined by '+')")
        try:
            v = float(view) if view else 1.0
        except ValueError:
            raise ConfigError(f"model.backbone={spec!r}: view {view!r} of {name!r} is not a number") from None
        if not 0.2 <= v <= 1.0:
            raise ConfigError(f"model.backbone={spec!r}: view {v} of {name!r} must be in [0.2, 1]")
        if round(v, 3) != v:
            raise ConfigError(f"model.backbone={spec!r}: view {v} of {name!r}: at most 3 decimals")
        members.append((name, v))
    return members


def backbone_spec(members: Sequence[tuple[str, float]]) -> str:
    """The inverse of :func:`parse_backbone`."""
    return "+".join(name if view == 1.0 else f"{name}@{view:g}" for name, view in members)


def member_shares(cfg: Config) -> list[float]:
    """Each ensemble member's share of ``train.minutes`` (see ``TrainConfig.member_shares``)."""
    n = len(parse_backbone(cfg.model.backbone))
    shares = list(cfg.train.member_shares)
    if not shares or (len(shares) != n and cfg.train.member_shares == TrainConfig.member_shares):
        return [1.0] * n
    return shares


def validate(cfg: Config) -> None:
    """Range checks that dataclass types cannot express."""
    checks = [
        (cfg.data.image_size_px >= 16, f"data.image_size_px={cfg.data.image_size_px} must be >= 16"),
        (cfg.data.face_detector in ("none", "yunet"), f"data.face_detector={cfg.data.face_detector!r} is not one of "
                                                      "['none', 'yunet']"),
        (16 <= cfg.data.aligned_px <= 1024, f"data.aligned_px={cfg.data.aligned_px} must be in [16, 1024]"),
        (0.1 <= cfg.data.crop_fraction <= 1.0, f"data.crop_fraction={cfg.data.crop_fraction} must be in [0.1, 1]"),
        (0.0 < cfg.data.val_fraction < 1.0, f"data.val_fraction={cfg.data.val_fraction} must be in (0, 1)"),
        (cfg.model.embedding_dim >= 2, f"model.embedding_dim={cfg.model.embedding_dim} must be >= 2"),
        (cfg.train.minutes > 0, f"train.minutes={cfg.train.minutes} must be > 0"),
        (cfg.train.identities_per_batch >= 2, "train.identities_per_batch must be >= 2"),
        (cfg.train.images_per_identity >= 2, "train.images_per_identity must be >= 2"),
        (cfg.train.lr > 0, f"train.lr={cfg.train.lr} must be > 0"),
        (all(0 < f < 1 for f in cfg.eval.target_fars), f"eval.target_fars={cfg.eval.target_fars} must be in (0, 1)"),
        (cfg.eval.default_far in cfg.eval.target_fars, "eval.default_far must be one of eval.target_fars"),
    ]
    checks += [
        (cfg.data.val_source in ("folds", "train"),
         f"data.val_source={cfg.data.val_source!r} is not one of ['folds', 'train']"),
        (0.0 <= cfg.train.ema_decay < 1.0, f"train.ema_decay={cfg.train.ema_decay} must be in [0, 1)"),
        (cfg.train.anchor_decay >= 0, f"train.anchor_decay={cfg.train.anchor_decay} must be >= 0"),
        (0.0 <= cfg.train.factor_at < 1.0, f"train.factor_at={cfg.train.factor_at} is a share: it must be in [0, 1)"),
        (not (cfg.train.factor_at and any(cfg.model.pw_ranks)) or not cfg.train.anchor_decay,
         "train.factor_at and train.anchor_decay cannot both be set (the anchor is the weights the run started from; "
         "set train.factor_at=0 to anchor)"),
        (cfg.train.max_steps >= 0, f"train.max_steps={cfg.train.max_steps} must be >= 0"),
        (cfg.train.device.split(":")[0] in ("auto", "cpu", "cuda", "mps"),
         f"train.device={cfg.train.device!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:N', 'mps']"),
        (cfg.train.amp in ("auto", "bf16", "fp16", "off"), f"train.amp={cfg.train.amp!r} is not one of "
                                                           "['auto', 'bf16', 'fp16', 'off']"),
        (cfg.train.loader_workers >= 0, f"train.loader_workers={cfg.train.loader_workers} must be >= 0"),
        (cfg.data.min_images_per_identity >= 1,
         f"data.min_images_per_identity={cfg.data.min_images_per_identity} must be >= 1"),
        (cfg.train.sampler_min_images >= 1, f"train.sampler_min_images={cfg.train.sampler_min_images} must be >= 1"),
        (0.0 <= cfg.train.augment_scale < 0.5, f"train.augment_scale={cfg.train.augment_scale} must be in [0, 0.5)"),
        *[(0.0 <= getattr(cfg.train, f"augment_{k}") <= 1.0,
           f"train.augment_{k}={getattr(cfg.train, f'augment_{k}')} is a probability: it must be in [0, 1]")
          for k in ("erase", "gray", "background")],
        (cfg.loss.triplet_weight >= 0, f"loss.triplet_weight={cfg.loss.triplet_weight} must be >= 0"),
    ]
    members = parse_backbone(cfg.model.backbone)
    checks += [
        (len(member_shares(cfg)) == len(members),
         f"train.member_shares={list(cfg.train.member_shares)} needs one value per member of "
         f"model.backbone={cfg.model.backbone!r} ({len(members)})"),
        (all(v > 0 for v in cfg.train.member_shares), "train.member_shares must all be > 0"),
        (not cfg.model.pretrained_file or len({n for n, _ in members}) == 1,
         "model.pretrained_file is one backbone's weights: the ensemble's members must all be that backbone"),
    ]
    mc = cfg.model
    checks += [
        (mc.inherit in ("", "sface"), f"model.inherit={mc.inherit!r} is not one of ['', 'sface']"),
        (not mc.inherit or (mc.backbone, mc.head, mc.embedding_dim) == ("mobilenetv1_100", "flatten", 128),
         f"model.inherit='sface' needs SFace's architecture: model.backbone='mobilenetv1_100', model.head='flatten', "
         f"model.embedding_dim=128 (got {mc.backbone!r}, {mc.head!r}, {mc.embedding_dim})"),
        (mc.stem_stride in (1, 2), f"model.stem_stride={mc.stem_stride} must be 1 or 2"),
        (len(set(mc.drop_blocks)) == len(mc.drop_blocks) and all(b in (6, 7, 8, 9, 10) for b in mc.drop_blocks),
         f"model.drop_blocks={list(mc.drop_blocks)} must be distinct values of [6, 7, 8, 9, 10] (SFace's 512-wide "
         "blocks conv_8..conv_12)"),
        (mc.inherit or (mc.stem_stride == 1 and not mc.drop_blocks and not mc.freeze_blocks),
         "model.stem_stride, model.drop_blocks and model.freeze_blocks act on SFace's architecture: they need "
         f"model.inherit='sface' (got stem_stride={mc.stem_stride}, drop_blocks={list(mc.drop_blocks)}, "
         f"freeze_blocks={mc.freeze_blocks}; without inheriting, set model.stem_stride=1 and leave the others out)"),
        (not any(mc.pw_ranks) or mc.inherit,
         f"model.pw_ranks={list(mc.pw_ranks)} factors SFace's convolutions: it needs model.inherit='sface' "
         "(without inheriting, set model.pw_ranks=[])"),
        (0 <= mc.freeze_blocks <= 13 - len(mc.drop_blocks),
         f"model.freeze_blocks={mc.freeze_blocks} must be in [0, {13 - len(mc.drop_blocks)}] (the student's blocks)"),
    ]
    dc = cfg.distill
    checks += [
        (min(dc.cosine_weight, dc.relation_weight, dc.bank_weight, dc.metric_weight) >= 0,
         "distill.cosine_weight, relation_weight, bank_weight and metric_weight must be >= 0"),
        (not dc.teacher or dc.cosine_weight + dc.relation_weight + dc.bank_weight > 0,
         "distillation needs distill.cosine_weight, relation_weight or bank_weight > 0"),
        (dc.bank_temperature > 0, f"distill.bank_temperature={dc.bank_temperature} must be > 0"),
        (dc.bank_size >= 1, f"distill.bank_size={dc.bank_size} must be >= 1"),
        (dc.extra_per_batch >= 0, f"distill.extra_per_batch={dc.extra_per_batch} must be >= 0"),
        (not dc.teacher or dc.extra_per_batch > 0 or dc.metric_weight > 0,
         "distillation needs distill.extra_per_batch > 0 or distill.metric_weight > 0 (a batch would be empty)"),
        (dc.teacher != "precomputed" or bool(dc.teacher_file), "distill.teacher=precomputed needs distill.teacher_file"),
        (dc.workers >= 1, f"distill.workers={dc.workers} must be >= 1"),
        (dc.centre_teacher in CENTRE_MODES,
         f"distill.centre_teacher={dc.centre_teacher!r} must be auto, on or off"),
        (dc.views >= -1, f"distill.views={dc.views} must be >= 0 (or -1: auto)"),
        (0.0 <= dc.view_fraction <= 1.0, f"distill.view_fraction={dc.view_fraction} is a share: it must be in [0, 1]"),
    ]
    losses = ("contrastive", "triplet", "multi-similarity", "arcface", "cosface")
    checks.append((cfg.loss.name in losses, f"loss.name={cfg.loss.name!r} is not one of {list(losses)}"))
    minings = ("all", "batch-hard", "semi-hard")
    checks.append((cfg.loss.mining in minings, f"loss.mining={cfg.loss.mining!r} is not one of {list(minings)}"))
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    check_pw_ranks(mc.pw_ranks, mc.drop_blocks)


def teacher_views_per_image(cfg: Config) -> int:
    """``distill.views`` resolved: -1 (auto) is `VIEWS_AUTO` for a budget of `VIEWS_AUTO_MIN_MINUTES` or more, else 0."""
    if cfg.distill.views >= 0:
        return cfg.distill.views
    return VIEWS_AUTO if cfg.train.minutes >= VIEWS_AUTO_MIN_MINUTES else 0


def cache_dir(configured: str = "") -> Path:
    """Where derived data is cached (aligned crops, teacher embeddings): ``configured``, else ``$FACEPIPE_CACHE``,
    else ``~/.cache/facepipe``."""
    return Path(configured or os.environ.get("FACEPIPE_CACHE") or Path.home() / ".cache" / "facepipe").expanduser()
