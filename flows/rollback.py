"""Rollback flow: make the previous (model, store) pair live again, atomically.

The previous store is first caught up with the images enrolled since the switch (embedded with the
previous model), so a rollback loses no enrolment. Run: ``python -m flows.rollback [--registry DIR]`` (default:
the flows settings' registry).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow

from flows.cli import FlowParser, run_main
from flows.model_tasks import roll_back
from flows.settings import FlowSettings, flow_defaults, flow_parameters
from flows.tasks import publish
from pipeline.data.manifest import empty_rejects

D = flow_defaults("rollback")  # flows.toml's values (flows.settings.flow_parameters)


@flow(name="rollback", log_prints=False)
def rollback_flow(registry: str = D["registry"], reason: str = "manual rollback",
                  chunk_size: int = D["chunk_size"]) -> dict[str, Any]:
    """Switch the registry back to its previous (model, store) pair."""
    result = roll_back(registry, reason, chunk_size)
    current = result["pointer"]["current"]
    summary = {"model_version": current["model_version"], "store": current["store"], "reason": reason,
               "caught_up_added": result["caught_up"]["added"], "caught_up_removed": result["caught_up"]["removed"],
               "pairs_left_for_rollback": len(result["pointer"]["previous"])}
    publish("Rollback", summary, empty_rejects(), key="rollback-summary")
    return summary


def parser() -> FlowParser:
    p = FlowParser("rollback", __doc__)
    p.add_setting("--registry", "registry.path", "the model registry", metavar="DIR")
    p.add_argument("--reason", default="manual rollback")
    p.add_setting("--chunk-size", "chunks.enroll", "images per catch-up embedding chunk", type=int)
    return p


def run(a: argparse.Namespace, settings: FlowSettings) -> dict[str, Any]:
    return rollback_flow(**flow_parameters(settings)["rollback"], reason=a.reason)


def main(argv: list[str] | None = None) -> int:
    return run_main(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
