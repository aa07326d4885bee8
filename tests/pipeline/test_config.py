"""The frozen config tree: TOML + overrides, typed, with errors that name the key."""

import dataclasses
from pathlib import Path

import pytest

from pipeline.core.config import Config, load_config, to_dict
from pipeline.core.errors import ConfigError


def test_defaults_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[model]\nbackbone = "resnet18"\nembedding_dim = 64\n[eval]\ntarget_fars = [0.001, 0.1]\n')
    cfg = load_config(f, ["train.minutes=2.5", "model.embedding_dim=32", "train.augment=false"])
    assert cfg.model.backbone == "resnet18"
    assert cfg.model.embedding_dim == 32  # CLI wins over the file
    assert cfg.train.minutes == 2.5 and cfg.train.augment is False
    assert cfg.eval.target_fars == (0.001, 0.1)
    assert load_config() == Config()
    assert to_dict(cfg)["model"]["backbone"] == "resnet18"
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'minutes'"):
        cfg.train.minutes = 3  # frozen, at every level of the tree
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'train'"):
        cfg.train = Config().train
    assert cfg.train.minutes == 2.5


@pytest.mark.parametrize("override,match", [
    ("train.minuts=3", "unknown key.*minuts.*valid keys"),
    ("train.minutes=soon", "cannot use 'soon' as float"),
    ("loss.name=magic", "loss.name='magic' is not one of"),
    ("minutes=3", "expected section.key=value"),
    ("nosuch.key=1", "unknown key.*nosuch"),
    ("train.minutes=-1", "must be > 0"),
    ("data.val_source=dev", "val_source='dev' is not one of"),
    ("train.ema_decay=1", "ema_decay=1.0 must be in"),
    ("loss.triplet_weight=-1", "triplet_weight=-1.0 must be >= 0"),
])
def test_bad_values_are_named(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
