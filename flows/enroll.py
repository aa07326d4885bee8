"""Enrol flow: identities from a folder or manifest -> embedded in chunks -> gallery store.

Idempotent: the store skips images already enrolled (same sha256), so a re-run adds nothing.
Run: ``python -m flows.enroll --model MODEL_DIR --index INDEX_DIR --images DIR|MANIFEST``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd
from prefect import flow

from flows.tasks import enroll_chunk, publish, read_table, write_table
from pipeline.data.manifest import empty_rejects
from pipeline.gallery import chunks


@flow(name="enroll", log_prints=False)
def enroll_flow(images: str, index: str, model: str | None = None, chunk_size: int = 1024,
                rejects_out: str | None = None) -> dict[str, Any]:
    """Enrol every image of ``images`` (needs identities) into the store at ``index``."""
    table = read_table(images, require_identities=True)
    results = [enroll_chunk(index, model, part) for part in chunks(table, chunk_size)]
    added = pd.concat([r.results for r in results], ignore_index=True) if results else pd.DataFrame()
    rejects = pd.concat([r.rejects for r in results if len(r.rejects)] or [empty_rejects()], ignore_index=True)
    if rejects_out and len(rejects):
        write_table(rejects, rejects_out)
    counts = {"images": len(table), "enrolled": len(added), "rejected": len(rejects),
              "identities_added": int(added["identity"].nunique()) if len(added) else 0}
    publish("Enrolment", counts, rejects, key="enroll-summary")
    return {**counts, "rejects": rejects}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.enroll", description=enroll_flow.__doc__)
    p.add_argument("--images", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--model")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--rejects", help="Parquet file for rejected images")
    a = p.parse_args(argv)
    res = enroll_flow(a.images, a.index, a.model, a.chunk_size, a.rejects)
    print({k: v for k, v in res.items() if k != "rejects"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
