"""BatchNorm folding for inference (pipeline/model/fold.py): faster, never different."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.model import fold
from pipeline.model.embed import embed_array, to_input
from pipeline.model.encoder import build_encoder


def _with_running_stats(enc: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (fresh ones are the identity, which hides a bad fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return enc.eval()


@pytest.mark.parametrize("backbone,kwargs,px,expected", [
    ("test_resnet", {}, 32, None),
    ("resnet10t", {}, 64, 14),  # 3 stem convs + 8 block convs + 3 downsample convs
    ("mobilenetv1_100", {"head": "flatten", "arch": {"shape": "sface", "stem_stride": 2, "drop_blocks": []}}, 96, 27),
])
def test_folded_copy_embeds_the_same(backbone, kwargs, px, expected) -> None:
    torch.manual_seed(0)
    enc = _with_running_stats(build_encoder(backbone, 32 if not kwargs else 128, input_px=px, **kwargs))
    x = torch.randn(6, 3, px, px)
    folded = fold.inference_copy(enc, x[:4])
    assert folded is not enc
    n = sum(isinstance(m, fold._AfterNorm) for m in folded.modules())
    assert n > 0 and (expected is None or n == expected)
    norms = [sum(isinstance(m, nn.BatchNorm2d) for m in e.modules()) for e in (enc, folded)]
    assert norms[1] == norms[0] - n  # each fold removes exactly one norm
    with torch.inference_mode():
        np.testing.assert_allclose(folded.embed(x).numpy(), enc.embed(x).numpy(), atol=2e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())  # the encoder itself is untouched


class _SharedOutput(nn.Module):
    """conv -> bn, but the conv's raw output is also added back: folding would change the sum."""

    embedding_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return nn.functional.normalize((self.bn(y) + y).mean(dim=(2, 3)), dim=1)

    forward = embed


def test_a_fold_that_would_change_embeddings_falls_back_to_the_encoder(caplog) -> None:
    torch.manual_seed(0)
    enc = _with_running_stats(_SharedOutput())
    x = torch.randn(4, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="pipeline.model.fold"):
        assert fold.inference_copy(enc, x) is enc
    assert "BatchNorm folding changed embeddings" in caplog.text
    assert fold.inference_copy(enc, x) is enc  # cached, and the cache does not keep the encoder alive
    assert fold._cache[enc][1] is None


def test_the_copy_follows_the_weights() -> None:
    """An optimiser step or load_state_dict after an embed call must not leave a stale copy in use."""
    torch.manual_seed(0)
    enc = _with_running_stats(build_encoder("test_resnet", 16, input_px=32))
    x = torch.randn(4, 3, 32, 32)
    first = fold.inference_copy(enc, x)
    assert fold.inference_copy(enc, x) is first
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    enc.train()
    enc.embed(x).sum().backward()
    opt.step()
    enc.eval()
    second = fold.inference_copy(enc, x)
    assert second is not first
    with torch.inference_mode():
        np.testing.assert_allclose(second.embed(x).numpy(), enc.embed(x).numpy(), atol=2e-5)
        assert np.abs(first.embed(x).numpy() - enc.embed(x).numpy()).max() > 1e-3
    other = _with_running_stats(build_encoder("test_resnet", 16, input_px=32), seed=1)
    enc.load_state_dict(other.state_dict())
    third = fold.inference_copy(enc, x)
    assert third is not second
    with torch.inference_mode():
        np.testing.assert_allclose(third.embed(x).numpy(), other.embed(x).numpy(), atol=2e-5)


def test_embed_array_is_the_encoder_and_leaves_it_as_it_was() -> None:
    torch.manual_seed(0)
    enc = _with_running_stats(build_encoder("test_resnet", 16, input_px=32)).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    images = np.random.default_rng(0).integers(0, 255, (70, 32, 32, 3), dtype=np.uint8)
    got = embed_array(enc, images, flip_tta=True)  # 3 CPU batches of 32
    assert enc.training  # restored
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    enc.eval()
    with torch.inference_mode():
        x = to_input(images)
        want = nn.functional.normalize(enc.embed(x) + enc.embed(torch.flip(x, dims=[3])), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
