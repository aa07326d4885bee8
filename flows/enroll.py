"""Enrol flow: new identities from a folder or manifest -> embedded in chunks -> the gallery store.

Embedding chunks run as tasks (on Dask when a scheduler is configured); commits happen in input order,
one atomic commit per chunk. Idempotent: images already in the store (same sha256) are skipped before
embedding, so a second run on the same input adds and embeds nothing. Bad images go to a rejects table.
Run: ``python -m flows.enroll --images DIR|MANIFEST [--registry DIR | --index INDEX_DIR [--model MODEL_DIR]]``;
the registry, chunk sizes and Dask scheduler default to the flows settings (flows/flows.toml).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd
from prefect import flow

from flows.cli import FlowParser, given, run_main, with_runner
from flows.settings import (
    FlowSettings,
    dask_address,
    flow_defaults,
    flow_parameters,
    task_runner,
)
from flows.tasks import (
    check_reject_share,
    commit_batch,
    embed_images,
    publish,
    read_table,
    resolve_target,
    windowed,
    write_table,
)
from pipeline.data.manifest import empty_rejects
from pipeline.serve.gallery import chunks

D = flow_defaults("enroll")  # flows.toml's values (flows.settings.flow_parameters)


@flow(name="enroll", log_prints=False, task_runner=task_runner(dask_address(), check_api=False))
def enroll_flow(images: str, index: str | None = None, model: str | None = None, registry: str | None = None,
                chunk_size: int = D["chunk_size"], rejects_out: str | None = None,
                max_in_flight: int = D["max_in_flight"],
                fail_reject_share: float = D["fail_reject_share"]) -> dict[str, Any]:
    """Enrol every image of ``images`` (identity folders or a manifest with identities) into a gallery."""
    table = read_table(images, require_identities=True)  # first: a bad input creates no store
    target = resolve_target(index, model, registry, create=True)
    enrolled, skipped, identities, rejects = 0, 0, set(), []
    batches = windowed(lambda part: embed_images.submit(target, part), chunks(table, chunk_size), max_in_flight)
    for batch in batches:
        result = commit_batch(target, batch)
        enrolled, skipped = enrolled + len(result.results), skipped + batch.skipped
        identities |= set(result.results["identity"])
        rejects.append(result.rejects)
    rejected = pd.concat([r for r in rejects if len(r)] or [empty_rejects()], ignore_index=True)
    if rejects_out and len(rejected):
        write_table(rejected, rejects_out)
    counts = {"images": len(table), "enrolled": enrolled, "already_enrolled": skipped, "rejected": len(rejected),
              "identities_added": len(identities), "model_version": target.model_version, "store": target.index_dir}
    publish("Enrolment", counts, rejected, key="enroll-summary")
    check_reject_share("enrolment", rejected, len(table), fail_reject_share)
    return {**counts, "rejects": rejected}


def parser() -> FlowParser:
    p = FlowParser("enroll", __doc__)
    p.add_argument("--images", required=True, metavar="DIR|MANIFEST")
    p.add_setting("--registry", "registry.path", "enrol into the registry's live store (with its live model), "
                  "unless --index is given", metavar="DIR")
    p.add_argument("--index", help="or: a gallery store directory")
    p.add_argument("--model", help="model of a new --index store")
    p.add_setting("--chunk-size", "chunks.enroll", "images per embedding task and commit", type=int)
    p.add_setting("--max-in-flight", "chunks.max_in_flight", "embedding tasks at once", type=int)
    p.add_setting("--fail-reject-share", "rejects.fail_share", "fail the run when at least this share is rejected",
                  type=float)
    p.add_argument("--rejects", help="Parquet file for rejected images")
    p.add_argument("--dask-address", help="run the embedding chunks on this Dask scheduler (default: "
                                          "$FACEPIPE_DASK_ADDRESS, else [dask] address)")
    return p


def run(a: argparse.Namespace, settings: FlowSettings) -> dict[str, Any]:
    params = {**flow_parameters(settings)["enroll"], **given(a, "images", "index", "model")}
    if a.registry is None and (a.index is not None or a.model is not None):
        params["registry"] = None  # --index/--model instead of the settings' registry
    res = with_runner(enroll_flow, a.dask_address, settings)(**params, rejects_out=a.rejects)
    return {k: v for k, v in res.items() if k != "rejects"}


def main(argv: list[str] | None = None) -> int:
    return run_main(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
