"""Rollback flow: make the previous (model, store) pair live again, atomically.

The previous store is first caught up with the images enrolled since the switch (embedded with the
previous model), so a rollback loses no enrolment. Run: ``python -m flows.rollback --registry DIR``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow

from flows.model_tasks import roll_back
from flows.tasks import publish
from pipeline.data.manifest import empty_rejects


@flow(name="rollback", log_prints=False)
def rollback_flow(registry: str, reason: str = "manual rollback", chunk_size: int = 512) -> dict[str, Any]:
    """Switch the registry back to its previous (model, store) pair."""
    result = roll_back(registry, reason, chunk_size)
    current = result["pointer"]["current"]
    summary = {"model_version": current["model_version"], "store": current["store"], "reason": reason,
               "caught_up_added": result["caught_up"]["added"], "caught_up_removed": result["caught_up"]["removed"],
               "pairs_left_for_rollback": len(result["pointer"]["previous"])}
    publish("Rollback", summary, empty_rejects(), key="rollback-summary")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.rollback", description=rollback_flow.__doc__)
    p.add_argument("--registry", required=True)
    p.add_argument("--reason", default="manual rollback")
    a = p.parse_args(argv)
    print(rollback_flow(a.registry, a.reason))
    return 0


if __name__ == "__main__":
    sys.exit(main())
