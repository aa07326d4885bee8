"""Model artefacts: safetensors + model.json, content-hash version, tamper detection, no pickle."""

import json
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import ModelArtifactError
from pipeline.model.artifacts import (
    load_model,
    preprocessing_dict,
    read_model_meta,
    save_model,
)
from pipeline.model.encoder import build_encoder


def _save(tmp_path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    enc = build_encoder("test_resnet", 8)
    save_model(enc, tmp_path / "m", backbone="test_resnet", preprocessing=preprocessing_dict(0.5, 32, True),
               thresholds={"far=0.001": 0.6, "far=0.01": 0.4}, default_far=1e-3, metrics={"val": {}}, config={})
    return tmp_path / "m"


def test_round_trip_gives_identical_embeddings(tmp_path: Path) -> None:
    d = _save(tmp_path)
    m = load_model(d)
    assert m.model_version.startswith("m-") and m.threshold == 0.6
    torch.manual_seed(0)
    ref = build_encoder("test_resnet", 8).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m.encoder.embed(x), ref.embed(x))
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == ["model.json", "model.safetensors"]


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    a, b = _save(tmp_path / "a", 0), _save(tmp_path / "b", 1)
    a2 = _save(tmp_path / "a2", 0)
    va, vb, va2 = (read_model_meta(p)["model_version"] for p in (a, b, a2))
    assert va == va2 and va != vb


def test_replaced_weights_are_refused(tmp_path: Path) -> None:
    d = _save(tmp_path)
    other = _save(tmp_path / "x", 5)
    (d / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ModelArtifactError, match="does not match model.json"):
        load_model(d)


def test_edited_json_is_refused(tmp_path: Path) -> None:
    d = _save(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["embedding_dim"] = 16
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelArtifactError, match="was edited"):
        load_model(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelArtifactError, match="not valid JSON"):
        load_model(d)


def test_pickle_only_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "pickled"
    d.mkdir()
    torch.save({"w": torch.ones(1)}, d / "model.pt")
    with pytest.raises(ModelArtifactError, match="pickled weights are refused"):
        load_model(d)
    with pytest.raises(ModelArtifactError, match="does not exist"):
        load_model(tmp_path / "missing")


def test_flatten_head_round_trip_and_old_models_default_to_gap(tmp_path: Path) -> None:
    torch.manual_seed(1)
    enc = build_encoder("test_resnet", 8, head="flatten", input_px=32).eval()
    save_model(enc, tmp_path / "f", backbone="test_resnet", head="flatten",
               preprocessing=preprocessing_dict(0.5, 32, True), thresholds={"far=0.001": 0.6},
               default_far=1e-3, metrics={}, config={})
    m = load_model(tmp_path / "f")
    assert m.meta["head"] == "flatten"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m.encoder.embed(x), enc.embed(x))
    # a model.json written before the head key existed loads as the pooled head
    d = _save(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    assert meta.pop("head") == "gap"
    (d / "model.json").write_text(json.dumps(meta))
    assert load_model(d).encoder.head_type == "gap"
