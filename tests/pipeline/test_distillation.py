"""Distillation: the loss against a hand computation, the mixed sampler, and a short training run that moves
the student towards a synthetic teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.splits import Split
from pipeline.evaluate.evalset import EvalSet
from pipeline.model.artifacts import load_model
from pipeline.model.embed import embed_array
from pipeline.train.loop import train
from pipeline.train.losses.distillation import DistillationLoss
from pipeline.train.prepare import TrainingData
from pipeline.train.recipe import build_distillation
from pipeline.train.sampling import DistillationSampler, PKSampler
from pipeline.train.teacher_targets import centre_teacher

DISTILL_RUN = ["model.backbone=test_resnet", "model.embedding_dim=16", "data.image_size_px=32", "data.crop_fraction=1.0",
               "train.augment=false", "train.minutes=2", "train.eval_every_steps=30", "train.ema_decay=0",
               "train.lr=0.01", "distill.teacher=precomputed", "distill.teacher_file=unused.parquet",
               "distill.extra_per_batch=16", "distill.metric_weight=0.5", "eval.flip_tta=false",
               "train.identities_per_batch=4"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_loss_matches_a_hand_computation() -> None:
    rng = np.random.default_rng(0)
    s, t = _unit(rng.normal(size=(5, 8))), _unit(rng.normal(size=(5, 8)))
    cos_term = np.mean(1.0 - (s * t).sum(axis=1))
    off = ~np.eye(5, dtype=bool)
    rel_term = np.mean(((s @ s.T) - (t @ t.T))[off] ** 2)
    loss = DistillationLoss(8, 8, cosine_weight=0.7, relation_weight=2.0)
    got = loss(torch.from_numpy(s).float(), torch.from_numpy(t).float()).item()
    assert got == pytest.approx(0.7 * cos_term + 2.0 * rel_term, rel=1e-5)
    assert DistillationLoss(8, 8)(torch.from_numpy(t).float(), torch.from_numpy(t).float()).item() == pytest.approx(0, abs=1e-6)


def test_a_projection_bridges_different_dimensions_and_learns() -> None:
    loss = DistillationLoss(16, 4, cosine_weight=1.0, relation_weight=0.0)
    assert sum(p.numel() for p in loss.parameters()) == 16 * 4
    s = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
    t = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    first = loss(s, t).item()
    for _ in range(100):
        opt.zero_grad()
        value = loss(s, t)
        value.backward()
        opt.step()
    assert value.item() < first / 4
    with pytest.raises(ValueError, match="not all 0"):
        DistillationLoss(4, 4, cosine_weight=0.0, relation_weight=0.0)


def test_bank_term_matches_a_hand_computation_and_is_not_saved() -> None:
    rng = np.random.default_rng(3)
    s, t = _unit(rng.normal(size=(4, 8))), _unit(rng.normal(size=(4, 8)))
    bank = _unit(rng.normal(size=(50, 8)))
    bank[:4] = t  # the batch's own teacher embeddings are in the bank, as in training

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_t, p_s = softmax(t @ bank.T / 0.1), softmax(s @ bank.T / 0.1)
    kl = np.mean((p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1))
    loss = DistillationLoss(8, 8, cosine_weight=0.0, relation_weight=0.0, bank=torch.from_numpy(bank),
                            bank_weight=1.5, bank_temperature=0.1)
    assert loss(torch.from_numpy(s).float(), torch.from_numpy(t).float()).item() == pytest.approx(1.5 * kl, rel=1e-4)
    assert kl > 0.1  # not trivially zero on these inputs
    assert loss(torch.from_numpy(t).float(), torch.from_numpy(t).float()).item() == pytest.approx(0, abs=1e-5)
    assert "bank" not in loss.state_dict()  # rebuilt from the teacher cache; checkpoints stay small
    with pytest.raises(ValueError, match="needs a bank"):
        DistillationLoss(8, 8, bank_weight=1.0)
    with pytest.raises(ValueError, match="needs a bank"):
        DistillationLoss(8, 4, bank=torch.from_numpy(bank), bank_weight=1.0)


def test_bank_term_pulls_a_student_to_the_teachers_neighbours() -> None:
    """Gradient descent on the bank term alone moves free student vectors onto their teacher embeddings."""
    rng = np.random.default_rng(4)
    bank = torch.from_numpy(_unit(rng.normal(size=(40, 8)))).float()
    s = torch.nn.functional.normalize(torch.randn(10, 8), dim=1).requires_grad_(True)
    loss = DistillationLoss(8, 8, cosine_weight=0.0, relation_weight=0.0, bank=bank, bank_weight=1.0,
                            bank_temperature=0.1)
    opt = torch.optim.SGD([s], lr=0.2)
    before = (torch.nn.functional.normalize(s, dim=1) * bank[:10]).sum(dim=1).mean().item()
    for _ in range(300):
        opt.zero_grad()
        value = loss(torch.nn.functional.normalize(s, dim=1), bank[:10])
        value.backward()
        opt.step()
    after = (torch.nn.functional.normalize(s, dim=1) * bank[:10]).sum(dim=1).mean().item()
    assert before < 0.5 and after > 0.95


def test_sampler_puts_the_labelled_pk_part_first_and_draws_every_pool_image_once_an_epoch() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, -1, -1, 4, -1], dtype=np.int64)  # -1: no identity
    sampler = DistillationSampler(len(labels), 3, PKSampler(labels, 2, 2, seed=1), seed=2)
    seen = []
    for idx, n_metric in sampler:
        assert n_metric == 4 and len(idx) == 7
        part = labels[idx[:n_metric]]
        assert (part >= 0).all() and len(set(part)) == 2 and all((part == u).sum() == 2 for u in set(part))
        seen += idx[n_metric:].tolist()
    assert len(sampler) == 12 // 7 and len(seen) == len(set(seen)) == 3 * len(sampler)
    only_extra = DistillationSampler(len(labels), 4, None, seed=0)
    drawn = np.concatenate([i for i, n in only_extra if n == 0])
    assert sorted(drawn.tolist()) == list(range(12))


def _synthetic_data(n_people: int = 24, per: int = 3, px: int = 40) -> tuple[TrainingData, np.ndarray]:
    """Images whose teacher embedding is a fixed function of their colour pattern (learnable by a student)."""
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(n_people, 3, 2, 2))
    images, labels, teacher = [], [], []
    proj = rng.normal(size=(12, 16))
    for p in range(n_people):
        for _ in range(per):
            c = codes[p] + 0.1 * rng.normal(size=codes[p].shape)
            img = np.kron(c.transpose(1, 2, 0), np.ones((px // 2, px // 2, 1)))
            images.append(np.clip(128 + 40 * img, 0, 255).astype(np.uint8))
            labels.append(p)
            teacher.append(c.reshape(-1) @ proj)
    images_a = np.stack(images)
    teacher_a = _unit(np.stack(teacher)).astype(np.float32)
    labels_a = np.array(labels, dtype=np.int64)
    val_idx = np.arange(len(labels_a))[labels_a >= n_people - 6]
    pi, pj = np.array([0, 0, 3], np.int64), np.array([1, 3, 4], np.int64)
    val = EvalSet("val", images_a[val_idx], labels_a[val_idx].astype(str).astype(object),
                  np.array([f"{i}.png" for i in val_idx], dtype=object), pi, pj, np.array([True, False, False]),
                  np.zeros(3, np.int64), pd.DataFrame(columns=["image_path", "error"]))
    train_idx = np.arange(len(labels_a))[labels_a < n_people - 6]
    split = Split(frozenset(), frozenset(), frozenset(), None, None)
    data = TrainingData(images_a[train_idx], labels_a[train_idx], [str(i) for i in range(n_people - 6)], val, split,
                        pd.DataFrame(), pd.DataFrame(columns=["image_path", "error"]), teacher=teacher_a[train_idx],
                        teacher_info={"name": "synthetic", "version": "t-test", "files": {}, "licence": "CC0"})
    return data, teacher_a


def test_training_moves_the_student_towards_the_teacher(tmp_path: Path) -> None:
    data, _ = _synthetic_data()
    cfg = load_config(None, [*DISTILL_RUN, "train.max_steps=60", "distill.bank_weight=0.5"])

    def agreement(model_dir: Path) -> float:
        emb = embed_array(load_model(model_dir).encoder, data.images[:, 4:36, 4:36], flip_tta=False)
        return float((emb * data.teacher).sum(axis=1).mean())

    short = train(load_config(None, [*DISTILL_RUN, "train.max_steps=1"]), data, tmp_path / "one_step")
    long = train(cfg, data, tmp_path / "distilled")
    assert agreement(long.model_dir) > agreement(short.model_dir) + 0.2
    meta = load_model(long.model_dir).meta
    assert meta["teacher"]["version"] == "t-test" and meta["training"]["distill"]["metric_weight"] == 0.5
    assert meta["training"]["distill"]["bank_weight"] == 0.5


def test_the_bank_holds_the_training_images_teacher_embeddings_and_is_capped() -> None:
    teacher = _unit(np.random.default_rng(5).normal(size=(30, 8))).astype(np.float32)
    full = build_distillation(load_config(None, ["distill.bank_weight=1"]), 8, teacher)
    assert np.array_equal(full.bank.numpy(), teacher)
    capped = build_distillation(load_config(None, ["distill.bank_weight=1", "distill.bank_size=12"]), 8, teacher)
    rows = {tuple(r) for r in teacher.round(6)}
    assert capped.bank.shape == (12, 8) and all(tuple(r) in rows for r in capped.bank.numpy().round(6))
    off = build_distillation(load_config(None, ["distill.bank_weight=0"]), 8, teacher)
    assert off.bank.shape == (0, 8) and off.bank_weight == 0  # switched off: no bank is kept
    for bad in ("distill.bank_temperature=0", "distill.bank_size=0", "distill.bank_weight=-1"):
        with pytest.raises(ConfigError, match="bank"):
            load_config(None, [bad])


def test_a_teacher_without_targets_is_a_clear_error(tmp_path: Path) -> None:
    data, _ = _synthetic_data(n_people=10)
    plain = TrainingData(data.images, data.labels, data.class_names, data.val, data.split, data.table, data.rejects)
    cfg = load_config(None, ["model.backbone=test_resnet", "model.embedding_dim=16", "data.image_size_px=32",
                             "distill.teacher=sface", "train.max_steps=2", "train.identities_per_batch=2"])
    with pytest.raises(DataError, match="needs the training rows"):
        train(cfg, plain, tmp_path / "m")
    with pytest.raises(ConfigError, match="no teacher embeddings"):
        build_distillation(cfg, 16, None)


def _cone(data: TrainingData, common: float) -> TrainingData:
    """``data`` with its teacher centred, then squeezed into a cone around a random axis by ``common`` (dlib-like:
    a large shared component; 0 = no shared component at all)."""
    axis = _unit(np.random.default_rng(9).normal(size=(1, data.teacher.shape[1])))
    centred = _unit(data.teacher - data.teacher.mean(axis=0))
    return TrainingData(data.images, data.labels, data.class_names, data.val, data.split, data.table, data.rejects,
                        teacher=_unit(common * axis + centred).astype(np.float32), teacher_info=data.teacher_info)


def test_a_teacher_in_a_narrow_cone_is_centred_and_others_are_left_alone() -> None:
    data, _ = _synthetic_data()
    cone = _cone(data, 4.0)
    out = centre_teacher(cone, "auto")
    info = out.teacher_info["centring"]
    assert info["centred"] and info["mean_norm"] > 0.9 and info["mode"] == "auto"
    assert np.allclose(np.linalg.norm(out.teacher, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(out.teacher.mean(axis=0)) < 0.3  # the shared component is gone
    before, after = cone.teacher @ cone.teacher.T, out.teacher @ out.teacher.T
    off = ~np.eye(len(before), dtype=bool)
    assert before[off].min() > 0.8 and after[off].min() < -0.3  # spread over [-1, 1] instead of a cone
    # the teacher's neighbours stay its neighbours: each image's most similar other image is unchanged
    np.fill_diagonal(before, -2), np.fill_diagonal(after, -2)
    assert (before.argmax(axis=1) == after.argmax(axis=1)).mean() > 0.95
    assert centre_teacher(out, "on") is out  # never centred twice
    spread = _cone(data, 0.0)  # no shared component worth removing
    kept = centre_teacher(spread, "auto")
    assert not kept.teacher_info["centring"]["centred"] and np.array_equal(kept.teacher, spread.teacher)
    assert centre_teacher(spread, "on").teacher_info["centring"]["centred"]
    assert np.array_equal(centre_teacher(cone, "off").teacher, cone.teacher)
    with pytest.raises(ConfigError, match="centre_teacher"):
        load_config(None, ["distill.centre_teacher=yes"])


def test_training_distils_the_centred_targets_of_a_cone_teacher_and_records_it(tmp_path: Path) -> None:
    data, _ = _synthetic_data()
    cone = _cone(data, 4.0)
    centred = centre_teacher(cone, "on").teacher
    run = [*DISTILL_RUN, "distill.metric_weight=0"]
    short = train(load_config(None, [*run, "train.max_steps=1"]), cone, tmp_path / "one_step")
    long = train(load_config(None, [*run, "train.max_steps=60"]), cone, tmp_path / "auto")

    def agreement(model_dir: Path, target: np.ndarray) -> float:
        emb = embed_array(load_model(model_dir).encoder, data.images[:, 4:36, 4:36], flip_tta=False)
        return float((emb * target).sum(axis=1).mean())

    assert agreement(long.model_dir, centred) > agreement(short.model_dir, centred) + 0.2
    meta = load_model(long.model_dir).meta
    assert meta["teacher"]["centring"]["centred"] and meta["teacher"]["centring"]["mean_norm"] > 0.9
    assert meta["training"]["distill"]["centre_teacher"] == "auto"
    off = train(load_config(None, [*run, "train.max_steps=1", "distill.centre_teacher=off"]), cone, tmp_path / "off")
    assert not load_model(off.model_dir).meta["teacher"]["centring"]["centred"]
