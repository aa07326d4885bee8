"""The flows settings: one loader (pipeline.core.config) with clear errors, one source of defaults for the flow
functions, the command lines and the deployments (flows.settings.flow_parameters), flags over the file."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from pathlib import Path

import pytest

from flows import enroll, lookup, retrain, rollback
from flows.model_tasks import load_training_config
from flows.settings import (
    DEFAULT_CONFIG,
    SETTINGS_ENV,
    FlowSettings,
    flow_parameters,
    load_settings,
    settings_path,
)
from pipeline.core.errors import ConfigError

FLOW_FUNCTIONS = {"retrain": retrain.retrain_flow, "enroll": enroll.enroll_flow, "lookup": lookup.lookup_flow,
                  "rollback": rollback.rollback_flow}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_settings_are_the_documented_defaults() -> None:
    shipped = load_settings(DEFAULT_CONFIG)
    assert shipped.retrain.min_improvement == 0.002
    assert shipped.retrain.overrides == ("train.minutes=3",)  # the default (distilled) recipe, 3 minutes like the demo
    # the built-in defaults (keys a settings file leaves out) are the same values, but for the site's data paths
    assert replace(shipped, retrain=replace(shipped.retrain, data="", pairs=None)) == FlowSettings()


def test_flow_functions_default_to_the_settings() -> None:
    """The Python defaults of every flow parameter that flows.toml sets are flows.toml's values."""
    expected = flow_parameters(load_settings(DEFAULT_CONFIG))
    for name, fn in FLOW_FUNCTIONS.items():
        defaults = {k: p.default for k, p in inspect.signature(fn.fn).parameters.items()}
        for key, value in expected[name].items():
            if name in ("enroll", "lookup") and key == "registry":
                assert defaults[key] is None  # index= is the alternative in Python; the CLI defaults to the registry
            else:
                assert defaults[key] == value, (name, key)
    assert inspect.signature(retrain.retrain_flow.fn).parameters["min_improvement"].default == 0.002


@pytest.mark.parametrize(("text", "message"), [
    ("[retrain]\nmin_improvment = 0.1\n",
     r"{p}: retrain: unknown key\(s\) \['min_improvment'\]; valid keys: \['cron', 'data', .*'min_improvement'"),
    ("[retrian]\n",
     r"{p}: root: unknown key\(s\) \['retrian'\]; valid keys: \['chunks', 'dask', 'registry', 'rejects', 'retrain'\]"),
    ("[chunks]\nenroll = 'many'\n", r"{p}: chunks.enroll: cannot use 'many' as int"),
    ("[chunks]\nlookup = 0\n", r"{p}: chunks.lookup=0 must be >= 1"),
    ("[retrain]\nmetric = 'f1'\n",
     r"{p}: retrain.metric='f1' is not one of \['auc', 'accuracy', 'eer', 'tar@far=<far>'\]"),
    ("[retrain]\nmin_improvement = -0.1\n", r"{p}: retrain.min_improvement=-0.1 must be >= 0"),
    ("retrain = 3\n", r"{p}: retrain: expected a section"),
    ("[retrain\n", r"flows settings {p} is not valid TOML"),
])
def test_settings_errors_name_the_file_the_key_and_the_valid_keys(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "flows.toml", text)
    with pytest.raises(ConfigError, match=message.replace("{p}", str(path).replace("\\", "\\\\"))):
        load_settings(path)
    with pytest.raises(ConfigError, match=f"flows settings {tmp_path / 'missing.toml'} does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_values_are_coerced_and_flags_override_single_values(tmp_path: Path) -> None:
    path = write(tmp_path / "flows.toml", '[retrain]\ndata = "faces"\noverrides = ["train.minutes=1"]\n'
                                          "min_improvement = 0\n[chunks]\nenroll = 8\n")
    s = load_settings(path)
    assert s.retrain.min_improvement == 0.0 and isinstance(s.retrain.min_improvement, float)
    assert s.retrain.overrides == ("train.minutes=1",) and s.chunks.enroll == 8 and s.chunks.lookup == 2048

    # the retrain command line: flags replace one value each, --set adds to the file's training overrides
    p = retrain.parser()
    args = p.parse_args(["--settings", str(path), "--min-improvement", "0.25", "--chunk-size", "3", "--pairs", "",
                         "--set", "train.minutes=2", "--set", "model.embedding_dim=24"])
    s = load_settings(args.settings, p.settings_overrides(args), args.set)
    assert (s.retrain.min_improvement, s.chunks.enroll, s.retrain.pairs) == (0.25, 3, None)
    assert s.retrain.overrides == ("train.minutes=1", "train.minutes=2", "model.embedding_dim=24")
    assert (s.retrain.data, s.chunks.max_in_flight) == ("faces", 4)  # not given: the file's / built-in values
    with pytest.raises(ConfigError, match=r"\(with command-line overrides\): chunks.enroll=0 must be >= 1"):
        load_settings(path, ["chunks.enroll=0"])


def test_the_settings_file_is_the_flag_then_the_environment_then_flows_toml(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    assert settings_path() == DEFAULT_CONFIG
    monkeypatch.setenv(SETTINGS_ENV, str(tmp_path / "env.toml"))
    assert settings_path() == tmp_path / "env.toml" and settings_path("flag.toml") == Path("flag.toml")


def test_a_flows_settings_file_given_as_the_training_config_is_refused_helpfully() -> None:
    with pytest.raises(ConfigError, match=r"is a flows settings file .*pass it as --settings .*--training-config takes "
                                          r"a pipeline config"):
        load_training_config.fn(str(DEFAULT_CONFIG), [])


def test_every_flow_prints_its_result_as_json_and_settings_errors_exit_2(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "flows.toml", "[chunks]\nenroll = 0\n")
    for module, argv in ((retrain, []), (enroll, ["--images", "x"]), (lookup, ["--probes", "x", "--out", "y"]),
                         (rollback, [])):
        assert module.main(["--settings", str(bad), *argv]) == 2
        err = capsys.readouterr().err
        assert err == f"python -m flows.{module.__name__.split('.')[-1]}: error: flows settings {bad}: " \
                      "chunks.enroll=0 must be >= 1\n"
    json.dumps(flow_parameters(load_settings(DEFAULT_CONFIG)))  # deployments' parameters are JSON
