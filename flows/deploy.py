"""Serve the flows as deployments against a Prefect server: retrain on its cron schedule, enroll / lookup /
rollback / forget on demand, each with its parameters from the flows settings (flows/flows.toml, or --settings FILE,
or $FACEPIPE_FLOWS_CONFIG). prefect.yaml holds the same deployments for `prefect deploy` + a process work pool;
it is generated from the settings by ``--write-prefect-yaml`` (a test keeps it equal to flows/flows.toml).

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1 (UI: http://127.0.0.1:4200)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy [--settings flows/flows.toml]
    prefect deployment run enroll/enroll -p images=new_people.csv
    prefect deployment run forget/forget -p identity="Jane Doe"
    python -m flows.deploy --write-prefect-yaml                 # regenerate prefect.yaml after editing flows.toml

Runs execute in subprocesses of this process, in its working directory (relative paths in the settings are
relative to it). With ``[dask] address`` (or $FACEPIPE_DASK_ADDRESS) set, their chunks run on that cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prefect
import yaml
from prefect import Flow, serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.cli import FlowParser, run_main
from flows.enroll import enroll_flow
from flows.forget import forget_flow
from flows.lookup import lookup_flow
from flows.retrain import retrain_flow
from flows.rollback import rollback_flow
from flows.settings import (
    DASK_ENV,
    SETTINGS_ENV,
    FlowSettings,
    dask_address,
    flow_parameters,
    settings_path,
)
from pipeline.core.errors import ConfigError

TAGS = ["facepipe"]
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
WORK_POOL = {"name": "facepipe", "work_queue_name": "default", "job_variables": {}}


@dataclass(frozen=True)
class Spec:
    name: str
    flow: Flow[..., Any]
    entrypoint: str  # file path form, for prefect.yaml
    description: str
    concurrency_limit: int | None = None
    scheduled: bool = False


SPECS = (
    Spec("retrain", retrain_flow, "flows/retrain.py:retrain_flow",
         "Train, gate, re-embed the gallery, switch (scheduled).", concurrency_limit=1, scheduled=True),
    Spec("enroll", enroll_flow, "flows/enroll.py:enroll_flow", "Enrol new identities into the live gallery."),
    Spec("lookup", lookup_flow, "flows/lookup.py:lookup_flow",
         "Verify or identify a probes manifest against the live pair."),
    Spec("rollback", rollback_flow, "flows/rollback.py:rollback_flow",
         "Make the previous (model, store) pair live again.", concurrency_limit=1),
    Spec("forget", forget_flow, "flows/forget.py:forget_flow",
         "Erase a person from the live store, every rollback store, the pinned evaluation set and the caches.",
         concurrency_limit=1),
)


def deployment_parameters(s: FlowSettings) -> dict[str, dict[str, Any]]:
    """Default parameters of each deployment (a run may override any of them): `flow_parameters`."""
    return flow_parameters(s)


def build_deployments(s: FlowSettings) -> list[RunnerDeployment]:
    """The five deployments; only retrain is scheduled, and never runs twice at once."""
    params = flow_parameters(s)
    return [spec.flow.to_deployment(name=spec.name, parameters=params[spec.name], description=spec.description,
                                    concurrency_limit=spec.concurrency_limit, tags=TAGS,
                                    schedules=[Cron(s.retrain.cron, timezone=s.retrain.timezone)] if spec.scheduled
                                    else None, entrypoint_type=EntrypointType.MODULE_PATH)
            for spec in SPECS]


def prefect_yaml(s: FlowSettings, source: str = "flows/flows.toml") -> str:
    """prefect.yaml's text: the deployments of `build_deployments`, for a process work pool."""
    params = flow_parameters(s)
    deployments = []
    for spec in SPECS:
        d: dict[str, Any] = {"name": spec.name, "description": spec.description, "entrypoint": spec.entrypoint,
                             "tags": list(TAGS)}
        if spec.concurrency_limit is not None:
            d["concurrency_limit"] = spec.concurrency_limit
        if spec.scheduled:
            d["schedules"] = [{"cron": s.retrain.cron, "timezone": s.retrain.timezone}]
        deployments.append({**d, "parameters": params[spec.name],
                            "work_pool": {**WORK_POOL, "job_variables": {}}})  # copies: no YAML anchors
    doc = {"name": "facepipe", "prefect-version": prefect.__version__, "build": None, "push": None,
           "deployments": deployments}
    header = (f"# GENERATED from {source} by `python -m flows.deploy --write-prefect-yaml`: edit the settings and\n"
              "# regenerate (tests/flows/test_deploy.py checks this file against flows/flows.toml). The same\n"
              "# deployments as `python -m flows.deploy` (flows/deploy.py), for a Prefect work pool instead of\n"
              "# `serve`.\n"
              "# From the repository root, with PREFECT_API_URL pointing at the server (docs/flows.md):\n"
              "#   prefect work-pool create facepipe --type process\n"
              "#   prefect --no-prompt deploy --all        # workers run the code from this directory\n"
              "#   prefect worker start --pool facepipe\n")
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)


def parser() -> FlowParser:
    p = FlowParser("deploy", __doc__)
    p.add_argument("--config", dest="legacy_config", metavar="FILE", help=argparse.SUPPRESS)  # renamed --settings
    p.add_argument("--write-prefect-yaml", nargs="?", const=str(PREFECT_YAML), metavar="FILE",
                   help=f"write the deployments to FILE (default: {PREFECT_YAML.name} of the repository) and exit")
    return p


def run(a: argparse.Namespace, settings: FlowSettings) -> Any:
    if a.legacy_config:
        raise ConfigError(f"--config is now --settings (the flows settings file): python -m flows.deploy --settings "
                          f"{a.legacy_config}")
    if a.write_prefect_yaml:
        source = settings_path(a.settings)
        shown = os.path.relpath(source, PREFECT_YAML.parent) if source.is_absolute() else str(source)
        Path(a.write_prefect_yaml).write_text(prefect_yaml(settings, shown.replace(os.sep, "/")), encoding="utf-8")
        return {"written": a.write_prefect_yaml, "from": str(source)}
    # the runs are subprocesses: they read these when importing the flows
    os.environ[SETTINGS_ENV] = str(settings_path(a.settings).resolve())
    address = dask_address(settings.dask.address)
    if address:
        os.environ[DASK_ENV] = address
    serve(*build_deployments(settings))
    return None


def main(argv: list[str] | None = None) -> int:
    return run_main(parser(), run, argv, quiet_logs=False)


if __name__ == "__main__":
    sys.exit(main())
