"""The Siamese encoder: one parameter set shared by both branches; unit-norm embeddings."""

import copy
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.core.errors import ConfigError, ModelArtifactError
from pipeline.model.distances import cosine_similarity, euclidean_distance
from pipeline.model.encoder import SiameseEncoder, build_encoder


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


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)


def _grads(encoder: torch.nn.Module, loss_of) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor | None]]:
    """Input and parameter gradients of ``loss_of(e1, e2)`` for one Siamese forward (eval mode: no batch
    statistics, so a branch's output depends on its own input only)."""
    x1, x2 = (x.requires_grad_() for x in _pair())
    encoder.zero_grad(set_to_none=True)
    loss_of(*encoder(x1, x2)).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in encoder.named_parameters()}
    encoder.zero_grad(set_to_none=True)
    return x1.grad, x2.grad, grads


def check_branch2_gradients_reach_branch1_weights(encoder: torch.nn.Module) -> None:
    w = torch.randn(encoder.embedding_dim, generator=torch.Generator().manual_seed(1))
    gx1, gx2, from_2 = _grads(encoder, lambda e1, e2: (e2 @ w).sum())  # a loss of branch 2 only
    assert gx1 is None or not gx1.any(), "the loss must depend on branch 2 only"
    assert gx2.abs().sum() > 0
    _, _, from_1 = _grads(encoder, lambda e1, e2: (e1 @ w).sum())  # the same loss on branch 1 only

    def used(grads: dict[str, torch.Tensor | None]) -> set[str]:
        return {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}

    # branch 2's loss trains exactly the weights branch 1 uses (timm zero-inits each block's last BN scale,
    # so a few convs get no gradient at init from either branch: most weights, incl. both ends, do)
    assert used(from_2) == used(from_1)
    assert {"head.0.weight", next(iter(from_1))} <= used(from_1) and len(used(from_1)) > len(from_1) // 2
    # ... with exactly the gradient of the single shared path (embed) applied to branch 2's input
    x2 = _pair()[1]
    encoder.zero_grad(set_to_none=True)
    (encoder.embed(x2) @ w).sum().backward()
    for name, p in encoder.named_parameters():
        expected = torch.zeros_like(p) if p.grad is None else p.grad
        got = torch.zeros_like(p) if from_2[name] is None else from_2[name]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4, msg=name)
    encoder.zero_grad(set_to_none=True)


def check_same_input_same_output(encoder: torch.nn.Module) -> None:
    x, y = _pair()
    e1, e2 = encoder(x, x)
    torch.testing.assert_close(e1, e2, atol=1e-6, rtol=1e-6)
    a1, a2 = encoder(x, y)
    b1, b2 = encoder(y, x)  # swapping the inputs swaps the outputs
    torch.testing.assert_close(a1, b2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a2, b1, atol=1e-6, rtol=1e-6)


def check_perturbing_a_weight_moves_both_branches(encoder: torch.nn.Module) -> None:
    x, y = _pair()
    for p in (next(encoder.backbone.parameters()), encoder.head[0].weight):  # a backbone and a head weight
        before = encoder(x, y)
        saved = p.detach().clone()
        with torch.no_grad():
            p.add_(0.5 * torch.randn_like(p))
        try:
            after = encoder(x, y)
            same = encoder(x, x)
        finally:
            with torch.no_grad():
                p.copy_(saved)
        for b, a in zip(before, after):
            assert (b - a).abs().max() > 1e-3  # the perturbed weight is in branch 1 AND branch 2
        torch.testing.assert_close(same[0], same[1], atol=1e-6, rtol=1e-6)


def check_one_backbone_in_state_dict(encoder: torch.nn.Module) -> None:
    # the reference: a plain timm backbone (as build_encoder makes it) + the head, nothing else
    reference = set(timm.create_model("test_resnet", num_classes=0).state_dict())
    keys = set(encoder.state_dict())
    assert keys == {f"backbone.{k}" for k in reference} | {f"head.{k}" for k in encoder.head.state_dict()}
    n_ref = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=0).parameters())
    assert sum(p.numel() for p in encoder.parameters()) == n_ref + sum(p.numel() for p in encoder.head.parameters())


SIAMESE_CHECKS = [check_branch2_gradients_reach_branch1_weights, check_same_input_same_output,
                  check_perturbing_a_weight_moves_both_branches, check_one_backbone_in_state_dict]


@pytest.mark.parametrize("check", SIAMESE_CHECKS, ids=lambda c: c.__name__)
def test_both_branches_share_one_parameter_set(encoder: SiameseEncoder, check) -> None:
    check(encoder)


class _TwoTowers(SiameseEncoder):
    """NOT Siamese: branch 2 runs its own copy of the weights. Every check above must reject it."""

    def __init__(self, base: SiameseEncoder, twin: SiameseEncoder) -> None:
        super().__init__(base.backbone, 1, base.embedding_dim)
        self.head = base.head
        self.backbone2, self.head2 = twin.backbone, twin.head

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None):
        if x2 is None:
            return self.embed(x1)
        return self.embed(x1), torch.nn.functional.normalize(self.head2(self.backbone2(x2)), dim=1)


@pytest.mark.parametrize("check", SIAMESE_CHECKS, ids=lambda c: c.__name__)
def test_the_checks_reject_two_towers(encoder: SiameseEncoder, check) -> None:
    # an identical copy defeats output comparisons, so that check gets an independently initialised twin
    twin = build_encoder("test_resnet", 16) if check is check_same_input_same_output else copy.deepcopy(encoder)
    with pytest.raises(AssertionError):
        check(_TwoTowers(encoder, twin).eval())


def test_gradients_from_both_branches_accumulate(encoder: SiameseEncoder) -> None:
    x1, x2 = _pair()
    w = encoder.head[0].weight
    grads = []
    for use in ("first", "second", "both"):
        encoder.zero_grad()
        e1, e2 = encoder(x1, x2)
        loss = {"first": e1.sum(), "second": e2.sum(), "both": e1.sum() + e2.sum()}[use]
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
