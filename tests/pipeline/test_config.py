"""The frozen config tree: TOML + overrides, typed, with errors that name the key."""

import dataclasses
from pathlib import Path

import pytest

from pipeline.core.config import VIEWS_AUTO, Config, load_config, teacher_views_per_image, to_dict
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


def test_the_default_recipe_settings_follow_the_backbone(tmp_path: Path) -> None:
    """The default is the SFace-inherited student; naming another backbone brings the generic settings, except
    the ones the user sets."""
    default = load_config()
    assert (default.model.backbone, default.model.inherit, default.model.head, default.model.stem_stride,
            default.data.image_size_px, default.train.lr) == ("mobilenetv1_100", "sface", "flatten", 2, 112, 2e-4)
    # teacher views: auto, 8 per face in the 57-minute budget, none in a few minutes (the demo's 3)
    assert default.distill.views == -1 and teacher_views_per_image(default) == VIEWS_AUTO == 8
    assert teacher_views_per_image(load_config(None, ["train.minutes=3"])) == 0
    assert teacher_views_per_image(load_config(None, ["distill.views=0"])) == 0
    assert teacher_views_per_image(load_config(None, ["distill.views=3", "train.minutes=3"])) == 3
    # the teacher's neighbourhood term: off for the inherited student (session 19), on for another backbone
    assert default.distill.bank_weight == 0.0 and default.distill.cosine_weight == default.distill.relation_weight == 1
    other = load_config(None, ["model.backbone=resnet10t"])
    assert (other.model.inherit, other.model.head, other.model.stem_stride, other.data.image_size_px,
            other.train.lr, other.distill.views, other.distill.bank_weight) == ("", "gap", 1, 80, 2e-3, 0, 1.0)
    assert dataclasses.replace(other.distill, views=-1, bank_weight=0.0) == default.distill  # the rest is shared
    assert load_config(None, ["model.backbone=resnet10t", "distill.bank_weight=0"]).distill.bank_weight == 0
    assert other.train.minutes == default.train.minutes
    mine = load_config(None, ["model.backbone=resnet10t", "model.head=flatten", "data.image_size_px=64"])
    assert (mine.model.head, mine.data.image_size_px, mine.train.lr) == ("flatten", 64, 2e-3)
    f = tmp_path / "c.toml"
    f.write_text('[model]\nbackbone = "resnet18"\n[train]\nlr = 1e-3\n')
    from_file = load_config(f)
    assert (from_file.model.inherit, from_file.train.lr, from_file.data.image_size_px) == ("", 1e-3, 80)
    with pytest.raises(ConfigError, match="model.inherit='sface' needs SFace's architecture"):
        load_config(None, ["model.backbone=resnet10t", "model.inherit=sface"])


@pytest.mark.parametrize("override,match", [
    ("train.minuts=3", "unknown key.*minuts.*valid keys"),
    ("train.minutes=soon", "cannot use 'soon' as float"),
    ("loss.name=magic", "loss.name='magic' is not one of"),
    ("minutes=3", "expected section.key=value"),
    ("nosuch.key=1", "unknown key.*nosuch"),
    ("train.minutes=-1", "must be > 0"),
    ("data.val_source=dev", "val_source='dev' is not one of"),
    ("train.ema_decay=1", "ema_decay=1.0 must be in"),
    ("train.anchor_decay=-1", "anchor_decay=-1.0 must be >= 0"),
    ("data.min_images_per_identity=0", "min_images_per_identity=0 must be >= 1"),
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
