"""The training loop: P x K batches -> shared encoder -> loss, under a wall-clock budget.

Read top to bottom: build model and loss, size the schedule to the time budget, loop, evaluate on
the validation people every ``eval_every_steps``, keep the best model, calibrate, save the artefact.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.config import Config, member_shares, to_dict
from pipeline.core.env import autocast_dtype, resolve_device, set_threads
from pipeline.core.errors import ConfigError
from pipeline.data.images import center_crop_resize
from pipeline.data.splits import identity_hashes
from pipeline.evaluate.calibration import achieved_far, calibrate_thresholds
from pipeline.evaluate.protocol import evaluate_encoder
from pipeline.model.artifacts import preprocessing_dict, save_model
from pipeline.model.embed import to_input
from pipeline.model.inherit import freeze_tail, inherit_sface, inherited_from, model_arch
from pipeline.model.encoder import (
    EnsembleEncoder,
    SiameseEncoder,
    backbone_spec,
    build_encoder,
    parse_backbone,
)
from pipeline.train import checkpoint as ckpt
from pipeline.train.batches import epoch_batches
from pipeline.train.prepare import TrainingData
from pipeline.train.recipe import (
    build_distillation,
    build_distillation_sampler,
    build_loss,
    build_sampler,
)
from pipeline.train.late_factoring import factor_trained, factored_before, full_rank_arch, is_late
from pipeline.train.schedule import AnchorPull, lr_at, update_ema
from pipeline.train.teacher_targets import attach_teacher, centre_teacher

log = logging.getLogger(__name__)

WARM_STEPS, TIMING_STEPS = 5, 20  # after 5 warm-up steps, 20 steps are timed to size the schedule
RESERVE_FRACTION = 0.1  # of the budget kept for evaluations, calibration and saving
RESIZE_EVERY_STEPS = 50  # the schedule length is re-estimated from the measured pace this often


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    model_dir: Path
    meta: dict[str, Any]
    steps: int
    epochs: float
    seconds: float
    best_val_auc: float


@dataclass
class _Member:
    """One trained member: its best weights (evaluated mode), steps, epochs, history, best val AUC."""

    model: SiameseEncoder
    steps: int
    epochs: float
    history: list[dict[str, Any]]
    best_auc: float
    interrupted: bool


def train(cfg: Config, data: TrainingData, out_dir: str | Path, *, resume: bool = False,
          on_step: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train an encoder within ``cfg.train.minutes`` and save the best one (by validation AUC) to ``out_dir``.

    With ``train.ema_decay > 0`` the weight average is what is evaluated, kept and saved.
    A checkpoint in ``out_dir/checkpoint`` is written at every evaluation; ``resume=True`` continues it.
    An ensemble spec (``model.backbone="a+b"``) trains its members one after another, each in its
    share (``train.member_shares``) of the time left, each with its own seed (``train.seed + i``) and
    checkpoint (``checkpoint/member-i``); a resumed run skips the members that finished.
    With ``distill.teacher`` set, every batch is also supervised by the teacher's embeddings of its images
    (`pipeline.train.teacher_targets.attach_teacher`, cached on disk) through `DistillationLoss`.
    """
    t0 = time.monotonic()
    out = Path(out_dir)
    if cfg.train.threads:
        set_threads(cfg.train.threads)
    if cfg.distill.teacher and data.teacher is None:  # teacher embeddings: from the cache, missing ones computed
        data = attach_teacher(data, cfg)
    data = centre_teacher(data, cfg.distill.centre_teacher)
    specs = parse_backbone(cfg.model.backbone)
    shares = member_shares(cfg)
    single = len(specs) == 1
    if resume:  # a checkpoint of the other layout (single <-> ensemble) is a different config
        other = out / "checkpoint" / "member-0" if single else out / "checkpoint"
        if ckpt.has_checkpoint(other):
            raise ConfigError(f"cannot resume {out / 'checkpoint'}: it was trained with a different config "
                              f"({'an ensemble' if single else 'one backbone'}); use a new --out")
    members: list[_Member] = []
    for i, (name, view) in enumerate(specs):
        ckpt_dir = out / "checkpoint" if single else out / "checkpoint" / f"member-{i}"
        left = cfg.train.minutes * 60.0 - (time.monotonic() - t0)
        if members and left <= 0:
            log.warning("time is up: the model is the %d member(s) trained so far", len(members))
            break
        budget_s = left * shares[i] / sum(shares[i:])
        if not single:
            log.info("member %d/%d: %s (view %.2f), %.1f min", i + 1, len(specs), name, view, budget_s / 60)
        try:
            members.append(_train_member(cfg, data, ckpt_dir, name, view, (i, len(specs)), budget_s, resume, on_step))
        except KeyboardInterrupt:  # outside a member's step loop (building, its last evaluation)
            if not members:
                raise
            log.warning("interrupted while starting or finishing member %d", i + 1)
            break
        if members[-1].interrupted:
            break
    if len(members) < len(specs):
        log.warning("the model is the %d member(s) trained so far: %s", len(members), backbone_spec(specs[: len(members)]))
        specs = specs[: len(members)]

    single = len(specs) == 1
    model: SiameseEncoder | EnsembleEncoder = members[0].model
    if not single or specs[0][1] != 1.0:
        model = EnsembleEncoder([m.model for m in members])
    model.eval()
    val_metrics, val_emb = evaluate_encoder(model, data.val, cfg.eval.target_fars, cfg.eval.flip_tta)
    thresholds = calibrate_thresholds(val_emb, data.val.identities, cfg.eval.target_fars)
    val_metrics["achieved_far"] = {k: achieved_far(val_emb, data.val.identities, t) for k, t in thresholds.items()}
    seconds = time.monotonic() - t0
    steps = sum(m.steps for m in members)
    epochs = sum(m.epochs for m in members)
    history = members[0].history if single else [{**h, "member": i} for i, m in enumerate(members) for h in m.history]
    training: dict[str, Any] = {
        "steps": steps, "epochs": round(epochs, 2), "seconds": round(seconds, 1),
        "train_images": int(len(data.labels)), "train_people": len(data.class_names),
        "val_people": len(data.split.val), "dev_people": len(data.split.dev), "history": history,
        "train_identity_hashes": identity_hashes(data.class_names),
        "val_identity_hashes": identity_hashes(sorted(data.split.val)),
        "device": str(resolve_device(cfg.train.device)), "torch_threads": torch.get_num_threads()}
    if cfg.model.inherit:
        training["inherited_from"] = inherited_from(cfg.model.inherit)
    if data.teacher_info is not None:
        training["teacher"] = data.teacher_info
        training["distill"] = to_dict(cfg)["distill"]
    if not single:
        training["members"] = [{"backbone": n, "view": v, "steps": m.steps, "epochs": round(m.epochs, 2),
                                "best_val_auc": m.best_auc} for (n, v), m in zip(specs, members)]
    meta = save_model(
        model, out, backbone=backbone_spec(specs), head=cfg.model.head,
        preprocessing=preprocessing_dict(cfg.data.crop_fraction, cfg.data.image_size_px, cfg.eval.flip_tta,
                                         face=data.face),
        thresholds=thresholds, default_far=cfg.eval.default_far, metrics={"val": val_metrics}, config=to_dict(cfg),
        training=training, arch=model_arch(cfg),
    )
    best = float(val_metrics.get("pairs", val_metrics.get("all_pairs", {})).get("auc", 0.0))
    return TrainResult(out, meta, steps, epochs, seconds, best if not single else members[0].best_auc)


CALIB_FACES = 512  # training faces that factor the pointwise convolutions (model.pw_ranks); bench/factor_time.py


def calibration_faces(cfg: Config, images: np.ndarray, seed: int, n: int = CALIB_FACES) -> torch.Tensor:
    """A seeded sample of ``n`` training faces as model input (central crop, no augmentation): what
    `pipeline.model.inherit.factor_pointwise` measures the teacher's layers on. Training faces only: dev and
    validation people are never in ``images``."""
    pick = np.sort(np.random.default_rng([seed, 15]).permutation(len(images))[:n])
    faces = np.stack([center_crop_resize(images[i], cfg.data.crop_fraction, cfg.data.image_size_px) for i in pick])
    return to_input(faces)


def _train_member(cfg: Config, data: TrainingData, ckpt_dir: Path, backbone: str, view: float,
                  member: tuple[int, int], budget_s: float, resume: bool,
                  on_step: Callable[[dict[str, Any]], None] | None) -> _Member:
    """Train member ``member = (index, of)`` for ``budget_s`` seconds; return its best (by validation AUC) weights."""
    t0 = time.monotonic()
    index, of = member
    seed = cfg.train.seed + index
    torch.manual_seed(seed)
    device = resolve_device(cfg.train.device)
    amp = autocast_dtype(device, cfg.train.amp)

    resuming = resume and ckpt.has_checkpoint(ckpt_dir)
    # train.factor_at: full rank first (a resumed run after the switch is built factored: its checkpoint is)
    factored = not is_late(cfg) or (resuming and factored_before(ckpt_dir))
    model = build_encoder(backbone, cfg.model.embedding_dim, pretrained=cfg.model.pretrained,
                          pretrained_file=cfg.model.pretrained_file, head=cfg.model.head,
                          input_px=cfg.data.image_size_px, dropout=cfg.model.head_dropout, view=view,
                          arch=model_arch(cfg) if factored else full_rank_arch(model_arch(cfg)))
    if cfg.model.inherit and (not resuming or cfg.train.anchor_decay > 0):
        # a resumed run loads its weights from the checkpoint below; it needs the teacher's only as the anchor's start
        inherit_sface(model, drop_blocks=tuple(cfg.model.drop_blocks),
                      calib=calibration_faces(cfg, data.images, seed) if factored and any(cfg.model.pw_ranks) else None)
    if cfg.model.freeze_blocks:
        log.info("%d parameters keep the teacher's weights", freeze_tail(model, cfg.model.freeze_blocks))
    loss_fn = build_loss(cfg, len(data.class_names))
    distill = build_distillation(cfg, model.embedding_dim, data.teacher)  # None without a teacher
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    ema = copy.deepcopy(model).eval() if cfg.train.ema_decay > 0 else None
    anchor = AnchorPull(model, cfg.train.anchor_decay) if cfg.train.anchor_decay > 0 else None
    kept = ema if ema is not None else model  # the weights that are evaluated and saved
    # what the checkpoint stores besides the model: loss parameters (+ distillation projection, weight average)
    losses = (loss_fn if distill is None else nn.ModuleDict({"metric": loss_fn, "distill": distill})).to(device)
    extra: nn.Module = losses if ema is None else nn.ModuleDict({"loss": losses, "ema": ema})

    def optimiser() -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad] + list(losses.parameters())
        return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    opt = optimiser()
    sampler = build_sampler(cfg, data.labels, seed) if distill is None else build_distillation_sampler(cfg, data, seed)
    teacher = None  # the target rows: the clean images' teacher embeddings, then the teacher views' (batches.Batch)
    if data.teacher is not None:
        rows = data.teacher if data.views is None else np.concatenate([data.teacher, data.views.teacher])
        teacher = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
    steps_per_epoch = max(1, len(sampler))

    step, total_steps, best_auc, history = 0, 0, -1.0, []
    if resuming:
        state = ckpt.load_checkpoint(ckpt_dir, model, extra, opt)
        if state["config"] != to_dict(cfg):
            raise ConfigError(f"cannot resume {ckpt_dir}: it was trained with a different config; use a new --out")
        step, total_steps, best_auc, history = state["step"], state["total_steps"], state["best_auc"], state["history"]
        if state.get("done"):
            log.info("member %d finished before (step %d, best val AUC %.4f): kept", index, step, best_auc)
            ckpt.load_best(ckpt_dir, model)
            return _Member(model.eval(), step, step / steps_per_epoch, history, best_auc, False)
        log.info("resumed at step %d of %d (best val AUC %.4f)", step, total_steps, best_auc)

    def evaluate_and_keep(done: bool = False, **note: Any) -> None:
        nonlocal best_auc
        metrics, _ = evaluate_encoder(kept, data.val, cfg.eval.target_fars, cfg.eval.flip_tta)
        auc = metrics.get("pairs", metrics.get("all_pairs", {})).get("auc", 0.0)
        history.append({"step": step, "val_auc": auc, "seconds": round(time.monotonic() - t0, 1), **note})
        if auc > best_auc:
            best_auc = auc
            ckpt.save_best(ckpt_dir, kept)
        save_state(done)
        log.info("step %d: val AUC %.4f (best %.4f)", step, auc, best_auc)

    def save_state(done: bool) -> None:
        ckpt.save_checkpoint(ckpt_dir, model, extra, opt, {"step": step, "total_steps": total_steps,
                                                           "best_auc": best_auc, "history": history,
                                                           "config": to_dict(cfg), "done": done,
                                                           "factored": factored})

    def switch_to_factored() -> None:
        # the evaluated weights (the average, else the model) are factored in place; the model to train restarts
        # from them
        nonlocal model, extra, opt, best_auc, factored
        factor_trained(kept, cfg, calibration_faces(cfg, data.images, seed).to(device))
        kept.to(memory_format=memory_format)
        if ema is not None:
            model = copy.deepcopy(ema).train()
            extra = nn.ModuleDict({"loss": losses, "ema": ema})
        opt, best_auc, factored = optimiser(), -1.0, True  # the saved best must have the factored shape
        evaluate_and_keep(factored=True)
        log.info("step %d: 1x1 convolutions factored to ranks %s", step, list(cfg.model.pw_ranks))

    max_steps = cfg.train.max_epochs * steps_per_epoch
    if cfg.train.max_steps:
        max_steps = min(max_steps, cfg.train.max_steps)
    start_step = step
    pace = (time.monotonic(), step)  # (time, step) from which the pace of steps is measured
    train_budget_s = budget_s * (1 - RESERVE_FRACTION)

    def resize_schedule(per_step: float) -> int:
        # the schedule ends when the training budget does; re-sized at every evaluation so that the
        # time evaluations take (and a shared machine's slowdowns) still let the cosine reach its end
        remaining = train_budget_s - (time.monotonic() - t0)
        return int(min(max_steps, step + max(1, remaining / per_step)))

    interrupted = False
    model.train()
    try:
        for epoch in itertools.count(step):  # a resumed run draws new epochs, not the ones it already saw
            for batch in epoch_batches(sampler, data.images, data.labels, cfg, seed, epoch, device,
                                       metric_only=distill is None, views=data.views):
                if total_steps == 0 and step - start_step == WARM_STEPS:
                    pace = (time.monotonic(), step)
                if total_steps == 0 and step - start_step == WARM_STEPS + TIMING_STEPS:
                    total_steps = resize_schedule((time.monotonic() - pace[0]) / TIMING_STEPS)
                    log.info("schedule of %d steps (%.1f epochs)", total_steps, total_steps / steps_per_epoch)
                limit = total_steps or max_steps
                if step >= limit or time.monotonic() - t0 > budget_s * (1 - RESERVE_FRACTION / 2):
                    raise StopIteration
                if not factored and step >= cfg.train.factor_at * limit:
                    switch_to_factored()
                    pace = (time.monotonic(), step)  # the thinner student's steps are faster: time them anew
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, limit, cfg)
                x = batch.x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                labels = batch.labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    emb = model.embed(x)
                emb = emb.float()  # losses in fp32: similarities of unit vectors need the precision
                if distill is None:
                    loss = loss_fn(emb, labels)
                else:  # teacher targets for every image; the metric loss on the labelled P x K part only
                    targets = batch.indices if batch.targets is None else batch.targets
                    loss = distill(emb, teacher[targets.to(device)])
                    if batch.n_metric and cfg.distill.metric_weight > 0:
                        loss = loss + cfg.distill.metric_weight * loss_fn(emb[: batch.n_metric], labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if anchor is not None:
                    anchor(opt.param_groups[0]["lr"])
                step += 1
                if ema is not None:
                    # warm-up of the average: early on it follows the model closely
                    update_ema(ema, model, min(cfg.train.ema_decay, (1 + step) / (10 + step)))
                if on_step is not None:
                    on_step({"step": step, "total_steps": limit, "loss": loss.item(), "epoch": step / steps_per_epoch,
                             "member": index, "members": of})
                if step % cfg.train.eval_every_steps == 0:
                    evaluate_and_keep()
                if total_steps and step % RESIZE_EVERY_STEPS == 0 and step > pace[1] + TIMING_STEPS:
                    per_step = (time.monotonic() - pace[0]) / (step - pace[1])
                    total_steps = resize_schedule(per_step)
    except StopIteration:
        pass
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: finishing with the best checkpoint", step)
        interrupted = True
    if not factored:  # stopped before the switch (time, interruption): the saved model must be the factored shape
        if (ckpt_dir / "best.safetensors").is_file():
            ckpt.load_best(ckpt_dir, kept)
        switch_to_factored()
    # an interrupted member is not done: a resumed run continues it
    if not history or history[-1]["step"] != step:
        evaluate_and_keep(done=not interrupted)
    else:
        save_state(done=not interrupted)
    ckpt.load_best(ckpt_dir, model)
    return _Member(model.eval(), step, step / steps_per_epoch, history, best_auc, interrupted)
