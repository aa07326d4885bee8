"""The one loader for frozen-dataclass trees: ``read_toml`` -> ``apply_overrides`` -> ``build_dataclass``.

A TOML file plus ``section.key=value`` strings become a frozen dataclass tree; each value is coerced to its
field's annotated type and unknown keys are refused with the list of valid ones. Used by the pipeline config
(`pipeline.core.config.load_config`) and the flows' operator settings (`flows.settings.load_settings`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.errors import ConfigError

T = TypeVar("T")


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Convert a TOML/CLI value to the annotated type of a config field."""
    tname = str(target)
    try:
        if "None" in tname and (value is None or (isinstance(value, str) and value.lower() in {"none", ""})):
            return None
        if tname.startswith("tuple"):
            inner = float if "float" in tname else int if "int" in tname else str
            if isinstance(value, str):
                value = [v for v in value.strip("()[] ").split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError(value)
            return tuple(inner(v) for v in value)
        if tname == "bool":
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return value.lower() in {"true", "1", "yes"}
            return bool(value)
        if tname.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if tname.startswith("float"):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(value, (dict, list)):
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config {where}: cannot use {value!r} as {tname}") from exc


def build_dataclass(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build a frozen dataclass tree from nested dicts: sections become nested dataclasses, values are coerced
    to the annotated types, missing keys keep their defaults, unknown keys raise `ConfigError` listing the
    valid ones. ``where`` prefixes error messages (e.g. ``"flows.toml"``)."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"config {where or 'root'}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name not in values:
            continue
        sub = f"{where}.{name}" if where else name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if is_dataclass(default):
            if not isinstance(values[name], dict):
                raise ConfigError(f"config {sub}: expected a section, got {values[name]!r}")
            kwargs[name] = build_dataclass(type(default), values[name], sub)
        else:
            kwargs[name] = _coerce(values[name], f.type, sub)
    return cls(**kwargs)


def read_toml(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """A TOML file as nested dicts; a missing or malformed file raises `ConfigError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {p} is not valid TOML: {exc}") from exc


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (a copy)."""
    out = json.loads(json.dumps(values))
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.minutes=5")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = raw
    return out
