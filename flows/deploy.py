"""Serve the flows as deployments against a Prefect server: retrain on its cron schedule, enroll / lookup /
rollback on demand. prefect.yaml holds the same deployments for `prefect deploy` + a process work pool.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1 (UI: http://127.0.0.1:4200)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy [--config flows/flows.toml]
    prefect deployment run enroll/enroll -p images=new_people.csv

Runs execute in subprocesses of this process, in its working directory (relative paths in the config are
relative to it). With ``[dask] address`` (or $FACEPIPE_DASK_ADDRESS) set, their chunks run on that cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.enroll import enroll_flow
from flows.lookup import lookup_flow
from flows.retrain import retrain_flow
from flows.rollback import rollback_flow
from flows.settings import DASK_ENV, FlowSettings, dask_address, load_settings

TAGS = ["facepipe"]


def deployment_parameters(s: FlowSettings) -> dict[str, dict[str, Any]]:
    """Default parameters of each deployment (a run may override any of them)."""
    r = s.retrain
    return {
        "retrain": {"registry": s.registry.path, "data": r.data, "pairs": r.pairs, "training_config": r.training_config,
                    "overrides": list(r.overrides), "eval_data": r.eval_data, "eval_pairs": r.eval_pairs,
                    "metric": r.metric, "min_improvement": r.min_improvement, "keep_versions": s.registry.keep_versions,
                    "chunk_size": s.chunks.enroll, "max_in_flight": s.chunks.max_in_flight},
        "enroll": {"registry": s.registry.path, "chunk_size": s.chunks.enroll, "max_in_flight": s.chunks.max_in_flight},
        "lookup": {"registry": s.registry.path, "chunk_size": s.chunks.lookup, "max_in_flight": s.chunks.max_in_flight},
        "rollback": {"registry": s.registry.path},
    }


def build_deployments(s: FlowSettings) -> list[RunnerDeployment]:
    """The four deployments; only retrain is scheduled, and never runs twice at once."""
    params = deployment_parameters(s)
    common: dict[str, Any] = {"tags": TAGS, "entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        retrain_flow.to_deployment(name="retrain", parameters=params["retrain"], concurrency_limit=1,
                                   schedules=[Cron(s.retrain.cron, timezone=s.retrain.timezone)],
                                   description="Train, gate, re-embed the gallery, switch (scheduled).", **common),
        enroll_flow.to_deployment(name="enroll", parameters=params["enroll"],
                                  description="Enrol new identities into the live gallery.", **common),
        lookup_flow.to_deployment(name="lookup", parameters=params["lookup"],
                                  description="Verify or identify a probes manifest against the live pair.", **common),
        rollback_flow.to_deployment(name="rollback", parameters=params["rollback"], concurrency_limit=1,
                                    description="Make the previous (model, store) pair live again.", **common),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="flows TOML (default: $FACEPIPE_FLOWS_CONFIG or flows/flows.toml)")
    a = p.parse_args(argv)
    settings = load_settings(a.config)
    address = dask_address(settings.dask.address)
    if address:
        os.environ[DASK_ENV] = address  # the runs are subprocesses: they read it when importing the flows
    serve(*build_deployments(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
