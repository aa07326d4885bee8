"""Forget flow: erase a person from the live store, every store kept for rollback, the pinned evaluation set and
the caches of aligned faces and teacher embeddings, with an ``erase`` entry in the registry's audit trail.

Run: ``python -m flows.forget --identity NAME [--registry DIR]`` (default: the flows settings' registry), or
``facepipe remove --registry DIR --identity NAME``. The report lists every place cleaned (`lifecycle.erasure`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.cli import FlowParser, run_main
from flows.settings import FlowSettings, flow_defaults
from flows.tasks import IO_RETRIES, publish
from lifecycle.erasure import erase_identity
from lifecycle.registry import ModelRegistry
from pipeline.data.manifest import empty_rejects

D = flow_defaults("forget")  # the registry of the settings in use


@task(cache_policy=NONE, **IO_RETRIES)
def erase(registry: str, identity: str, caches: str | None) -> dict[str, Any]:
    return erase_identity(ModelRegistry.open(registry), identity, caches=caches)


@flow(name="forget", log_prints=False)
def forget_flow(identity: str, registry: str = D["registry"], caches: str | None = None) -> dict[str, Any]:
    """Erase ``identity`` everywhere the registry keeps face data (and the caches under ``caches``)."""
    report = erase(registry, identity, caches)
    summary = {"identity": identity, "rows_removed": sum(report["stores"].values()),
               "stores_cleaned": sum(1 for n in report["stores"].values() if n),
               "eval_images_removed": report["eval_images"],
               **{f"cache_{k}": v for k, v in report["cache_rows"].items()}}
    publish("Erasure", summary, empty_rejects(), key="forget-summary")
    return report


def parser() -> FlowParser:
    p = FlowParser("forget", __doc__)
    p.add_setting("--registry", "registry.path", "the model registry", metavar="DIR")
    p.add_argument("--identity", required=True, metavar="NAME")
    p.add_argument("--caches", metavar="DIR", help="cache folder (default: $FACEPIPE_CACHE or ~/.cache/facepipe)")
    return p


def run(a: argparse.Namespace, settings: FlowSettings) -> dict[str, Any]:
    return forget_flow(a.identity, registry=settings.registry.path, caches=a.caches)


def main(argv: list[str] | None = None) -> int:
    return run_main(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
