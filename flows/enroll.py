"""Enrol flow: new identities from a folder or manifest -> embedded in chunks -> the gallery store.

Embedding chunks run as tasks (on Dask when a scheduler is configured); commits happen in input order,
one atomic commit per chunk. Idempotent: images already in the store (same sha256) are skipped before
embedding, so a second run on the same input adds and embeds nothing. Bad images go to a rejects table.
Run: ``python -m flows.enroll --images DIR|MANIFEST (--registry DIR | --index INDEX_DIR [--model MODEL_DIR])``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd
from prefect import flow

from flows.settings import dask_address, task_runner
from flows.tasks import commit_batch, embed_images, publish, read_table, resolve_target, windowed, write_table
from pipeline.data.manifest import empty_rejects
from pipeline.gallery import chunks


@flow(name="enroll", log_prints=False, task_runner=task_runner(dask_address()))
def enroll_flow(images: str, index: str | None = None, model: str | None = None, registry: str | None = None,
                chunk_size: int = 512, rejects_out: str | None = None, max_in_flight: int = 4) -> dict[str, Any]:
    """Enrol every image of ``images`` (identity folders or a manifest with identities) into a gallery."""
    target = resolve_target(index, model, registry, create=True)
    table = read_table(images, require_identities=True)
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
    return {**counts, "rejects": rejected}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.enroll", description=enroll_flow.__doc__)
    p.add_argument("--images", required=True)
    p.add_argument("--registry", help="enrol into the registry's live store (with its live model)")
    p.add_argument("--index", help="or: a gallery store directory")
    p.add_argument("--model", help="model of a new --index store")
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--max-in-flight", type=int, default=4)
    p.add_argument("--rejects", help="Parquet file for rejected images")
    p.add_argument("--dask-address", help="run the embedding chunks on this Dask scheduler")
    a = p.parse_args(argv)
    fl = enroll_flow.with_options(task_runner=task_runner(a.dask_address)) if a.dask_address else enroll_flow
    res = fl(a.images, a.index, a.model, a.registry, a.chunk_size, a.rejects, a.max_in_flight)
    print({k: v for k, v in res.items() if k != "rejects"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
