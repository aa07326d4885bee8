"""The Siamese encoder: one parameter set shared by both branches; unit-norm embeddings."""

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.errors import ConfigError, ModelArtifactError
from pipeline.model import SiameseEncoder, build_encoder, cosine_similarity, euclidean_distance


@pytest.fixture()
def encoder() -> SiameseEncoder:
    torch.manual_seed(0)
    return build_encoder("test_resnet", 16).eval()


def test_forward_returns_two_unit_embeddings(encoder: SiameseEncoder) -> None:
    x1, x2 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    e1, e2 = encoder(x1, x2)
    assert e1.shape == e2.shape == (3, 16)
    torch.testing.assert_close(e1.norm(dim=1), torch.ones(3))
    # each branch equals the single-branch embedding (same weights, eval mode)
    torch.testing.assert_close(e1, encoder.embed(x1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e2, encoder.embed(x2), atol=1e-5, rtol=1e-5)


def test_one_parameter_set_and_gradients_from_both_branches(encoder: SiameseEncoder) -> None:
    # exactly one copy of every weight: parameters are not duplicated per branch
    ids = [id(p) for p in encoder.parameters()]
    assert len(ids) == len(set(ids))
    n_backbone = sum(p.numel() for p in encoder.backbone.parameters())
    n_head = sum(p.numel() for p in encoder.head.parameters())
    assert sum(p.numel() for p in encoder.parameters()) == n_backbone + n_head

    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    w = encoder.head[0].weight
    grads = []
    for use in ("first", "second", "both"):
        encoder.zero_grad()
        e1, e2 = encoder(x1, x2)
        loss = (e1.sum() if use == "first" else 0) + (e2.sum() if use == "second" else 0)
        if use == "both":
            loss = e1.sum() + e2.sum()
        loss.backward()
        grads.append(w.grad.clone())
    g1, g2, g12 = grads
    assert g1.abs().sum() > 0 and g2.abs().sum() > 0  # both branches reach the shared weight
    torch.testing.assert_close(g12, g1 + g2, atol=1e-5, rtol=1e-4)  # and accumulate into ONE tensor


def test_distances_agree_on_unit_vectors(encoder: SiameseEncoder) -> None:
    e1, e2 = encoder(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(euclidean_distance(e1, e2) ** 2, 2 - 2 * cosine_similarity(e1, e2), atol=1e-5, rtol=1e-5)


def test_unknown_backbone_names_close_matches() -> None:
    with pytest.raises(ConfigError, match="resnet"):
        build_encoder("resnet_does_not_exist", 8)


def test_local_pretrained_file_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    donor = timm.create_model("test_resnet", num_classes=0)
    state = {k: v.contiguous() for k, v in donor.state_dict().items()}
    weights = tmp_path / "backbone.safetensors"
    save_file(state, str(weights))
    enc = build_encoder("test_resnet", 8, pretrained_file=str(weights))
    for k, v in enc.backbone.state_dict().items():
        torch.testing.assert_close(v, state[k])
    fresh = build_encoder("test_resnet", 8)
    assert any(not torch.equal(v, state[k]) for k, v in fresh.backbone.state_dict().items() if v.is_floating_point())


def test_pickled_or_missing_backbone_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="does not exist"):
        build_encoder("test_resnet", 8, pretrained_file=str(tmp_path / "nope.safetensors"))
    pt = tmp_path / "w.pth"
    pt.write_bytes(b"pickle")
    with pytest.raises(ModelArtifactError, match="no pickle"):
        build_encoder("test_resnet", 8, pretrained_file=str(pt))


def test_flatten_head_keeps_the_spatial_map_and_shares_weights() -> None:
    enc = build_encoder("test_resnet", 16, head="flatten", input_px=64, dropout=0.2)
    # test_resnet has stride 32 and 96 channels: a 2 x 2 map at 64 px -> 384 inputs to the Linear layer
    linear = [m for m in enc.head if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 and linear[0].in_features == 96 * 2 * 2
    enc.eval()
    x = torch.randn(3, 3, 64, 64)
    a, b = enc(x, x.flip(-1))
    assert a.shape == (3, 16) and torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    torch.testing.assert_close(a, enc.embed(x))  # dropout is off in eval mode: deterministic
    # the spatial layout reaches the embedding: the mirrored image embeds differently
    assert not torch.allclose(a, b, atol=1e-3)


def test_flatten_head_needs_the_input_size_and_a_known_name() -> None:
    with pytest.raises(ConfigError, match="input size"):
        build_encoder("test_resnet", 8, head="flatten")
    with pytest.raises(ConfigError, match="model.head"):
        build_encoder("test_resnet", 8, head="attention")
