"""Device plumbing, checked on the CPU: device names, autocast choice, the batch stream (in-process vs DataLoader
workers give the same batches), a training run under bf16 autocast, and clear errors for absent accelerators.
`bench/device_check.sh` runs the same paths on a machine with a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.env import autocast_dtype, resolve_device
from pipeline.core.errors import ConfigError
from pipeline.model.artifacts import load_model
from pipeline.train.batches import epoch_batches
from pipeline.train.sampling import PKSampler

NO_GPU = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_GPU, reason="this machine has CUDA: auto must pick it (bench/device_check.sh)")
def test_auto_is_the_cpu_without_accelerators_and_absent_ones_are_clear_errors() -> None:
    assert resolve_device("auto") == torch.device("cpu") or resolve_device("auto").type == "mps"
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device 'cuda' is not available on this machine \(available: "):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"device 'tpu' is not one of \['auto', 'cpu', 'cuda', 'mps'\]"):
        resolve_device("tpu")


def test_autocast_is_off_on_the_cpu_unless_asked() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "off") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "fp16") is torch.float16
    with pytest.raises(ConfigError, match="amp='fp8'"):
        autocast_dtype(cpu, "fp8")


def test_dataloader_workers_make_the_same_batches_as_the_training_process() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 20, 20, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 4)
    cfg = load_config(None, ["data.image_size_px=16", "train.loader_workers=2"])
    sampler = PKSampler(labels, 3, 2, seed=3)
    local = list(epoch_batches(sampler, images, labels, cfg, 7, 0, torch.device("cpu"), metric_only=True))
    sampler = PKSampler(labels, 3, 2, seed=3)  # same seed: same index batches
    # any non-CPU device type takes the DataLoader path (pinned memory only for CUDA)
    loaded = list(epoch_batches(sampler, images, labels, cfg, 7, 0, torch.device("meta"), metric_only=True))
    assert len(local) == len(loaded) == len(sampler) > 1
    for a, b in zip(local, loaded):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels) and torch.equal(a.x, b.x)
    assert not torch.equal(local[0].x, local[1].x)


def test_training_under_bf16_autocast_and_loading_on_a_device(tmp_path: Path, synthetic_folders: Path) -> None:
    from pipeline.train.loop import train
    from pipeline.train.prepare import prepare_training

    cfg = load_config(None, ["model.backbone=test_resnet", "model.embedding_dim=8", "data.image_size_px=32",
                             "data.crop_fraction=1.0", "train.max_steps=3", "train.minutes=1", "train.amp=bf16",
                             "train.device=cpu", "train.identities_per_batch=2", "data.val_fraction=0.34",
                             "data.face_detector=none", "distill.teacher="])
    res = train(cfg, prepare_training(synthetic_folders, None, cfg), tmp_path / "m")
    assert res.steps == 3 and res.meta["training"]["device"] == "cpu"
    model = load_model(tmp_path / "m", device="auto")
    assert next(model.encoder.parameters()).device.type == resolve_device("auto").type
    if NO_GPU:
        with pytest.raises(ConfigError, match="not available"):
            load_model(tmp_path / "m", device="cuda")
