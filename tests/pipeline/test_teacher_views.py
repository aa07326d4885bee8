"""Teacher views: drawn and rendered reproducibly, made of the faces they name, embedded by the teacher exactly as
the student is shown them, cached, and served in batches with their own targets."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from test_distillation import DISTILL_RUN, _synthetic_data

from pipeline.core.config import VIEWS_AUTO, VIEWS_AUTO_MIN_MINUTES, load_config
from pipeline.core.errors import ConfigError
from pipeline.core.io import file_digest
from pipeline.model.artifacts import load_model
from pipeline.model.embed import to_input
from pipeline.model.teachers import TeacherCache
from pipeline.train.augment import face_mask
from pipeline.train.batches import epoch_batches
from pipeline.train.loop import train
from pipeline.train.prepare import prepare_training
from pipeline.train.teacher_targets import attach_teacher
from pipeline.train.teacher_views import (
    VIEW_PX,
    TeacherViews,
    ViewSpec,
    draw_spec,
    render_view,
    student_copy,
    view_key,
)

sys.path.insert(0, str(Path(__file__).parent / "model"))
from teacher_testlib import CountingTeacher


def _shas(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, VIEW_PX, VIEW_PX, 3), dtype=np.uint8)


def _plain(image: int, **kw) -> ViewSpec:
    """A view that changes nothing unless told."""
    base = {"image": image, "number": 0, "partner": -1, "lam": 1.0, "donor": -1, "angle": 0.0, "zoom": 1.0,
            "shift": (0.0, 0.0), "flip": False, "gain": 1.0, "bias": 0.0, "saturation": 1.0, "gray": False,
            "blur": 0.0, "lowres": 0}
    return ViewSpec(**{**base, **kw})


def test_views_are_drawn_and_rendered_reproducibly_and_differ() -> None:
    shas, faces = _shas(20), _faces(20)
    a = [draw_spec(shas, 3, k, seed=0) for k in range(8)]
    assert a == [draw_spec(shas, 3, k, seed=0) for k in range(8)]  # same (seed, image, number): same view
    assert len({(s.partner, s.donor, round(s.angle, 6)) for s in a}) == 8  # the views of one image differ
    assert draw_spec(shas, 3, 0, seed=1) != a[0]
    assert all(s.image == 3 and s.partner != 3 and s.donor != 3 for s in a)  # blends and swaps use OTHER faces
    assert any(s.partner >= 0 for s in a) and any(s.partner < 0 for s in a)
    assert np.array_equal(render_view(faces, a[0]), render_view(faces, a[0]))
    assert not np.array_equal(render_view(faces, a[0]), render_view(faces, a[1]))
    # the key names the images a view is made of: another partner or donor, another key
    keys = {view_key(shas, s, 0) for s in a}
    assert len(keys) == 8
    other = _shas(21)[1:]  # the same positions hold other images
    assert view_key(other, a[0], 0) != view_key(shas, a[0], 0)
    assert view_key(shas, a[0], 1) != view_key(shas, a[0], 0)


def test_a_view_is_made_of_the_faces_it_names() -> None:
    faces = _faces(3)
    assert np.array_equal(render_view(faces, _plain(1)), faces[1])
    blend = render_view(faces, _plain(0, partner=2, lam=0.6)).astype(np.float64)
    assert np.abs(blend - (0.6 * faces[0] + 0.4 * faces[2])).max() <= 0.5 + 1e-6
    swapped = render_view(faces, _plain(0, donor=1))
    m = face_mask(VIEW_PX, 1.0).numpy()
    inside, outside = m > 0.999, m < 0.001
    assert np.array_equal(swapped[inside], faces[0][inside]) and np.array_equal(swapped[outside], faces[1][outside])
    assert np.array_equal(render_view(faces, _plain(2, flip=True)), faces[2][:, ::-1])
    grey = render_view(faces, _plain(2, gray=True)).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1 and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1
    with pytest.raises(ValueError, match="112 px"):
        render_view(faces[:, :64, :64], _plain(0))


def test_the_students_copy_is_the_central_crop_at_its_size() -> None:
    view = _faces(1)[0]
    assert np.array_equal(student_copy(view, 1.0, VIEW_PX), view)
    small = student_copy(view, 0.5, 40)
    assert small.shape == (40, 40, 3)
    assert np.array_equal(small, cv2.resize(view[28:84, 28:84], (40, 40), interpolation=cv2.INTER_AREA))


def _views_data(per_image: int) -> tuple:
    data, _ = _synthetic_data()
    n = len(data.labels)
    faces = np.stack([cv2.resize(im, (VIEW_PX, VIEW_PX)) for im in data.images])
    shas = _shas(n)
    specs = [draw_spec(shas, i, k, 0) for i in range(n) for k in range(per_image)]
    rows = np.random.default_rng(1).normal(size=(len(specs), data.teacher.shape[1])).astype(np.float32)
    views = TeacherViews(faces, specs, rows / np.linalg.norm(rows, axis=1, keepdims=True), per_image)
    return replace(data, views=views), views


def test_batches_serve_views_with_their_own_targets() -> None:
    data, views = _views_data(per_image=3)
    n = len(data.labels)
    sampler = [(np.arange(i, i + 8) % n, 0) for i in range(0, 40, 8)]
    cfg = load_config(None, [*DISTILL_RUN, "distill.views=3", "distill.view_fraction=1.0"])
    for b in epoch_batches(sampler, data.images, data.labels, cfg, 0, 0, torch.device("cpu"), metric_only=False,
                           views=views):
        rows = b.targets.numpy() - n  # every image was served as one of its views
        assert np.array_equal(rows // 3, b.indices.numpy())
        want = to_input(np.stack([student_copy(render_view(views.faces, views.specs[r]), 1.0, 32) for r in rows]))
        assert torch.allclose(b.x, want)
    cfg0 = load_config(None, [*DISTILL_RUN, "distill.views=3", "distill.view_fraction=0"])
    for b in epoch_batches(sampler, data.images, data.labels, cfg0, 0, 0, torch.device("cpu"), metric_only=False,
                           views=views):
        assert torch.equal(b.targets, b.indices)
    half = load_config(None, [*DISTILL_RUN, "distill.views=3", "distill.view_fraction=0.5"])
    served = sum(int((b.targets >= n).sum()) for b in epoch_batches(
        sampler * 10, data.images, data.labels, half, 0, 0, torch.device("cpu"), metric_only=False, views=views))
    assert 0.35 < served / 400 < 0.65
    for bad in ("distill.view_fraction=1.5", "distill.views=-2"):
        with pytest.raises(ConfigError, match="distill.view"):
            load_config(None, [bad])


def test_training_on_views_pulls_the_student_to_the_views_targets(tmp_path: Path) -> None:
    data, views = _views_data(per_image=2)
    # the views' targets: a fixed function of what the student is shown (so it can be learnt)
    shown = views.student_images(np.arange(len(views.specs)), 1.0, 32).astype(np.float32)
    proj = np.random.default_rng(3).normal(size=(3 * 4, data.teacher.shape[1])).astype(np.float32)
    feats = shown.reshape(len(shown), 2, 16, 2, 16, 3).mean(axis=(2, 4)).reshape(len(shown), -1)
    t = (feats - feats.mean(0)) @ proj
    data = replace(data, views=replace(views, teacher=(t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)))
    run = [*DISTILL_RUN, "distill.views=2", "distill.view_fraction=1.0", "distill.metric_weight=0",
           "distill.relation_weight=0", "distill.bank_weight=0"]

    def agreement(model_dir: Path) -> float:
        enc = load_model(model_dir).encoder
        from pipeline.model.embed import embed_array
        emb = embed_array(enc, shown.astype(np.uint8), flip_tta=False)
        return float(np.abs(np.corrcoef((emb @ emb.T).ravel(), (data.views.teacher @ data.views.teacher.T).ravel())[0, 1]))

    short = train(load_config(None, [*run, "train.max_steps=1"]), data, tmp_path / "one")
    long = train(load_config(None, [*run, "train.max_steps=80"]), data, tmp_path / "long")
    assert agreement(long.model_dir) > agreement(short.model_dir) + 0.1


@pytest.fixture(scope="module")
def tiny_folder(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of 8 real people x 2 photos (absolute paths)."""
    rows = []
    for person in sorted(p.name for p in lfw_root.iterdir() if p.is_dir()):
        imgs = sorted((lfw_root / person).iterdir())
        if len(imgs) >= 2:
            rows += [(str(i), person) for i in imgs[:2]]
        if len(rows) >= 16:
            break
    path = tmp_path_factory.mktemp("views") / "tiny.csv"
    pd.DataFrame(rows, columns=["image_path", "identity"]).to_csv(path, index=False)
    return path


@pytest.mark.realdata
def test_attach_teacher_embeds_each_view_as_rendered_and_caches_them(tiny_folder: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    base = ["distill.teacher=counting", "distill.workers=1", f"data.cache_dir={tmp_path / 'cache'}",
            "data.val_source=train", "data.val_fraction=0.25", "data.image_size_px=32"]
    cfg = load_config(None, [*base, "distill.views=3"])
    data = prepare_training(tiny_folder, None, cfg)
    import pipeline.train.teacher_targets as tt
    teacher = CountingTeacher(calls_file=str(calls))
    orig = tt._teacher
    tt._teacher = lambda c: teacher  # the same teacher, recording its calls
    try:
        out = attach_teacher(data, cfg)
        n = len(data.labels)
        assert out.views is not None and out.views.teacher.shape == (3 * n, 8) and len(out.views.specs) == 3 * n
        assert out.teacher_info["views"] == {"per_image": 3, "version": "views-1", "seed": 0, "setting": 3}
        embedded = sum(int(line.split()[1]) for line in calls.read_text().splitlines())
        assert embedded == 4 * n  # n plain + 3n views
        again = attach_teacher(data, cfg)  # a later run: everything from the cache
        assert sum(int(line.split()[1]) for line in calls.read_text().splitlines()) == embedded
        # each view's target is the teacher's embedding of that very view
        for r in (0, 4, 3 * n - 1):
            want = teacher.embed(render_view(out.views.faces, out.views.specs[r])[None])[0]
            assert np.allclose(out.views.teacher[r], want, atol=1e-5)
        assert np.array_equal(again.views.teacher, out.views.teacher)
        # erasing one photo erases its plain row and every view it is part of (as the face, blend or surroundings)
        sha0 = file_digest(data.rows["abs_path"].iloc[0])
        involved = sum(1 for sp in out.views.specs if 0 in (sp.image, sp.partner, sp.donor))
        assert involved > 3 and TeacherCache(tmp_path / "cache" / "teachers").erase([sha0]) == 1 + involved
        before = sum(int(line.split()[1]) for line in calls.read_text().splitlines())
        attach_teacher(data, cfg)
        assert sum(int(line.split()[1]) for line in calls.read_text().splitlines()) == before + 1 + involved
        off = attach_teacher(data, load_config(None, [*base, "distill.views=0"]))
        assert off.views is None and "views" not in off.teacher_info
        # auto (the default, -1): no views in a few-minute budget (the demo, the shipped retrain flow) ...
        short = attach_teacher(data, load_config(None, [*base, "train.minutes=3"]))
        assert short.views is None and "views" not in short.teacher_info
        # ... VIEWS_AUTO of them from VIEWS_AUTO_MIN_MINUTES on (the 57-minute default budget)
        long = attach_teacher(data, load_config(None, [*base, f"train.minutes={VIEWS_AUTO_MIN_MINUTES}"]))
        assert long.views is not None and long.views.teacher.shape == (VIEWS_AUTO * n, 8)
        assert long.teacher_info["views"]["per_image"] == VIEWS_AUTO and long.teacher_info["views"]["setting"] == -1
        # views 0-2 are the ones drawn before: the same faces, served from the cache
        first3 = long.views.teacher.reshape(n, VIEWS_AUTO, 8)[:, :3]
        assert np.allclose(first3, out.views.teacher.reshape(n, 3, 8), atol=1e-5)
    finally:
        tt._teacher = orig
