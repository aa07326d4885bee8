"""The OpenCV DNN runtime of the encoder (pipeline/model/runtime.py): faster, never different, never a changed encoder."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.core.errors import ConfigError
from pipeline.model import runtime
from pipeline.model.embed import embed_array, to_input
from pipeline.model.encoder import build_encoder
from pipeline.model.fold import inference_copy


def _encoder(backbone: str = "mobilenetv1_100", px: int = 64) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"head": "flatten", "arch": {"shape": "sface", "stem_stride": 2, "drop_blocks": [6, 7]}} \
        if backbone == "mobilenetv1_100" else {}
    enc = build_encoder(backbone, 32, input_px=px, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics: fresh ones are the identity
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return enc.eval()


def _faces(n: int, px: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


@pytest.fixture
def runtime_env(monkeypatch):
    def set_runtime(name: str) -> None:
        monkeypatch.setenv(runtime.ENV, name)
    return set_runtime


@pytest.mark.parametrize("flip_tta", [False, True])
@pytest.mark.parametrize("backbone", ["mobilenetv1_100", "resnet10t"])
def test_opencv_embeds_as_torch(runtime_env, backbone, flip_tta) -> None:
    enc = _encoder(backbone)
    faces = _faces(37)  # 32 + a batch of 5: the exported batch dimension is free
    runtime_env("torch")
    ref = embed_array(enc, faces, flip_tta=flip_tta)
    runtime_env("opencv")
    got = embed_array(enc, faces, flip_tta=flip_tta)
    assert runtime.cached(enc) and runtime._cache[enc][1] is not None  # it did run in OpenCV
    np.testing.assert_allclose(got, ref, atol=runtime.TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-3)  # different faces, different embeddings


def test_blob_is_to_input() -> None:
    faces = _faces(3, 16)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    np.testing.assert_allclose(runtime.blob(faces, mean, std), to_input(faces, mean, std).numpy(), atol=1e-5)


def test_export_leaves_modes_alone() -> None:
    """The exporter restores the wrapper's train/eval mode, and with it the network's: a fresh wrapper is in train
    mode, which once left a folded copy running BatchNorm on batch statistics (embeddings off by 0.5)."""
    enc = _encoder()
    x = to_input(_faces(4))
    net = inference_copy(enc, x)
    with torch.inference_mode():
        before = net.embed(x)
    runtime.export_onnx(net, x)
    assert not any(m.training for m in net.modules())
    with torch.inference_mode():
        torch.testing.assert_close(net.embed(x), before)
    enc.train()
    enc.head[1].eval()  # a mixed state is kept module by module
    runtime.export_onnx(enc, x)
    assert [m.training for m in enc.modules()] == [m is not enc.head[1] for m in enc.modules()]


def test_cache_follows_the_weights(runtime_env) -> None:
    enc = _encoder()
    faces = _faces(8)
    runtime_env("opencv")
    before = embed_array(enc, faces, flip_tta=False)
    runner = runtime._cache[enc][1]
    assert runner is not None
    with torch.no_grad():
        enc.head[3].weight.mul_(-1.0)  # an optimiser step, in place
    assert not runtime.cached(enc)
    after = embed_array(enc, faces, flip_tta=False)
    assert runtime._cache[enc][1] is not runner
    np.testing.assert_allclose(after, -before, atol=runtime.TOLERANCE)  # the head's sign flipped, and so do they


def test_a_failed_export_falls_back_to_torch(runtime_env, monkeypatch, caplog) -> None:
    enc = _encoder()
    faces = _faces(6)
    runtime_env("torch")
    ref = embed_array(enc, faces, flip_tta=False)

    def boom(*_a, **_k):
        raise RuntimeError("Unsupported: ONNX export of operator foo\nmore detail")

    monkeypatch.setattr(runtime, "export_onnx", boom)
    runtime_env("opencv")
    with caplog.at_level(logging.INFO, logger="pipeline.model.runtime"):
        got = embed_array(enc, faces, flip_tta=False)
    np.testing.assert_array_equal(got, ref)
    assert runtime._cache[enc][1] is None
    assert "cannot run in OpenCV DNN (RuntimeError: Unsupported: ONNX export of operator foo)" in caplog.text


def test_a_disagreeing_export_is_refused(runtime_env, monkeypatch, caplog) -> None:
    enc = _encoder()
    faces = _faces(6)
    runtime_env("torch")
    ref = embed_array(enc, faces, flip_tta=False)
    monkeypatch.setattr(runtime, "TOLERANCE", -1.0)  # nothing agrees within a negative tolerance
    runtime_env("opencv")
    with caplog.at_level(logging.WARNING, logger="pipeline.model.runtime"):
        got = embed_array(enc, faces, flip_tta=False)
    np.testing.assert_array_equal(got, ref)
    assert "OpenCV DNN embeddings differ from torch's" in caplog.text


def test_auto_exports_only_for_large_jobs(runtime_env, monkeypatch) -> None:
    enc = _encoder()
    runtime_env("auto")
    monkeypatch.setattr(runtime, "AUTO_MIN_PASSES", 40)
    embed_array(enc, _faces(19), flip_tta=True)  # 38 passes: torch, nothing exported
    assert not runtime.cached(enc)
    embed_array(enc, _faces(20), flip_tta=True)  # 40 passes: exported
    assert runtime.cached(enc) and runtime._cache[enc][1] is not None
    assert runtime.use_opencv(enc, torch.device("cpu"), 1)  # now any job of these weights
    assert not runtime.use_opencv(enc, torch.device("cpu"), 10**6, "torch")
    assert not runtime.use_opencv(enc, torch.device("cuda"), 10**6, "opencv")  # accelerators run torch


def test_runtime_setting(monkeypatch) -> None:
    monkeypatch.delenv(runtime.ENV, raising=False)
    assert runtime.runtime_setting() == "auto"
    monkeypatch.setenv(runtime.ENV, " OpenCV ")
    assert runtime.runtime_setting() == "opencv"
    monkeypatch.setenv(runtime.ENV, "onnxruntime")
    with pytest.raises(ConfigError, match=r"FACEPIPE_EMBED_RUNTIME='onnxruntime' is not one of \['auto', 'torch', 'opencv'\]"):
        runtime.runtime_setting()


def test_cv_threads_restores() -> None:
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        with runtime.cv_threads(2):
            assert cv2.getNumThreads() == 2
        assert cv2.getNumThreads() == 1
        with pytest.raises(KeyError), runtime.cv_threads(2):
            raise KeyError("x")
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_embed_runs_opencv_on_the_torch_threads(runtime_env) -> None:
    """After an aligner left OpenCV on one thread, the exported encoder still gets torch's threads, and OpenCV is
    back on one thread afterwards."""
    enc = _encoder()
    before = cv2.getNumThreads()
    seen = []
    runtime_env("opencv")
    try:
        cv2.setNumThreads(1)
        embed_array(enc, _faces(4), flip_tta=False, progress=lambda _n: seen.append(cv2.getNumThreads()))
        assert seen == [torch.get_num_threads()]
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
