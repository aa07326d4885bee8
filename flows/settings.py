"""Operator settings of the flows (one TOML file) and the task runner they use.

The file (default ``flows/flows.toml``, or ``$FACEPIPE_FLOWS_CONFIG``) names the registry, the data and
schedule of the retrain flow, chunk sizes, and the Dask scheduler. Relative paths are relative to the
directory the flows are started from. ``$FACEPIPE_DASK_ADDRESS`` overrides ``[dask] address``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pipeline.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).with_name("flows.toml")
DASK_ENV = "FACEPIPE_DASK_ADDRESS"


@dataclass(frozen=True)
class RegistrySettings:
    path: str = "registry"
    keep_versions: int = 2  # previous (model, store) pairs kept for rollback


@dataclass(frozen=True)
class RetrainSettings:
    data: str = ""  # identity folders or a manifest
    pairs: str | None = None  # LFW-format pairs file: its dev folds are the fixed evaluation set
    training_config: str | None = None  # pipeline TOML config
    overrides: tuple[str, ...] = ()  # section.key=value, e.g. "train.minutes=3"
    eval_data: str | None = None  # default: data
    eval_pairs: str | None = None  # default: pairs
    metric: str = "auc"  # auc | accuracy | eer | tar@far=<far>
    min_improvement: float = 0.0  # the candidate must beat the live model by MORE than this
    cron: str = "0 3 * * 0"
    timezone: str = "UTC"


@dataclass(frozen=True)
class ChunkSettings:
    enroll: int = 512
    lookup: int = 2048
    max_in_flight: int = 4  # chunks submitted at once: bounds memory whatever the input size


@dataclass(frozen=True)
class DaskSettings:
    address: str = ""  # "tcp://host:8786"; empty: tasks run in the flow's process (threads)


@dataclass(frozen=True)
class FlowSettings:
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    chunks: ChunkSettings = field(default_factory=ChunkSettings)
    dask: DaskSettings = field(default_factory=DaskSettings)


def _section(cls: type[Any], values: dict[str, Any], name: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"flows config [{name}]: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    out = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"flows config [{name}] {key}: expected a list of strings, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool) or (default is not None and not isinstance(value, type(default))
                                          and not (isinstance(default, float) and isinstance(value, int))):
            raise ConfigError(f"flows config [{name}] {key}: expected {type(default).__name__}, got {value!r}")
        out[key] = value
    return cls(**out)


def load_settings(path: str | os.PathLike[str] | None = None) -> FlowSettings:
    """Read the flows TOML (``path``, else ``$FACEPIPE_FLOWS_CONFIG``, else flows/flows.toml)."""
    p = Path(path or os.environ.get("FACEPIPE_FLOWS_CONFIG") or DEFAULT_CONFIG)
    if not p.is_file():
        raise ConfigError(f"flows config {p} does not exist")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"flows config {p} is not valid TOML: {exc}") from exc
    sections = {f.name: f for f in fields(FlowSettings)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"flows config {p}: unknown section(s) {unknown}; valid: {sorted(sections)}")
    kwargs = {name: _section(type(f.default_factory()), raw.get(name, {}), name)  # type: ignore[misc]
              for name, f in sections.items()}
    settings = FlowSettings(**kwargs)
    if settings.registry.keep_versions < 0 or settings.chunks.enroll < 1 or settings.chunks.lookup < 1:
        raise ConfigError(f"flows config {p}: keep_versions must be >= 0 and chunk sizes >= 1")
    return settings


def dask_address(configured: str | None = None) -> str | None:
    """The Dask scheduler to use: ``$FACEPIPE_DASK_ADDRESS`` if set, else ``configured``; None for none."""
    return os.environ.get(DASK_ENV) or configured or None


def task_runner(address: str | None = None) -> TaskRunner[Any]:
    """DaskTaskRunner on the scheduler at ``address`` (prefect-dask), else threads in this process."""
    if address:
        from prefect.settings import get_current_settings
        from prefect_dask import DaskTaskRunner  # the `dask` extra; an ImportError here says to install it

        if not get_current_settings().api.url:
            raise ConfigError(f"running tasks on the Dask scheduler {address} needs a Prefect server that the workers "
                              "share: start one (`prefect server start`) and set PREFECT_API_URL (without it, every "
                              "worker would record its task runs in a temporary API of its own)")
        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=4)
