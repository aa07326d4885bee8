"""Lookup flow: a probes manifest -> 1:1 verify or 1:N identify -> results Parquet (DESIGN.md columns).

Chunked, so 100k probes run in bounded memory; results are the library's own (pipeline.gallery).
Run: ``python -m flows.lookup --index INDEX_DIR --probes FILE --mode identify --out hits.parquet``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd
from prefect import flow

from flows.tasks import lookup_chunk, publish, read_table, write_table
from pipeline.data.manifest import empty_rejects
from pipeline.gallery import chunks


@flow(name="lookup", log_prints=False)
def lookup_flow(probes: str, index: str, out: str, mode: str = "identify", top_k: int = 5,
                threshold: float | None = None, model: str | None = None, chunk_size: int = 2048) -> dict[str, Any]:
    """Answer every probe of ``probes`` against the store at ``index``; write ``out`` (Parquet)."""
    if mode not in ("verify", "identify"):
        raise ValueError(f"mode={mode!r} is not one of ['verify', 'identify']")
    table = read_table(probes, require_identities=False)
    results = [lookup_chunk(index, model, part, mode, top_k, threshold) for part in chunks(table, chunk_size)]
    res = pd.concat([r.results for r in results], ignore_index=True)
    rejects = pd.concat([r.rejects for r in results if len(r.rejects)] or [empty_rejects()], ignore_index=True)
    write_table(res, out)
    if len(rejects):
        write_table(rejects, out.removesuffix(".parquet") + ".rejects.parquet")
    if mode == "verify":
        counts = {"claims": len(res), "match": int(res["match"].sum()) if len(res) else 0, "rejected": len(rejects)}
    else:
        top1 = res[res["rank"] == 1] if len(res) else res
        counts = {"probes": len(top1), "identified": int((top1["decision"] != "unknown").sum()) if len(res) else 0,
                  "unknown": int((top1["decision"] == "unknown").sum()) if len(res) else 0, "rejected": len(rejects)}
    publish(f"Lookup ({mode})", counts, rejects, key=f"lookup-{mode}")
    return {**counts, "out": out, "rejects": rejects}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.lookup", description=lookup_flow.__doc__)
    p.add_argument("--probes", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["verify", "identify"], default="identify")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threshold", type=float)
    p.add_argument("--model")
    p.add_argument("--chunk-size", type=int, default=2048)
    a = p.parse_args(argv)
    res = lookup_flow(a.probes, a.index, a.out, a.mode, a.top_k, a.threshold, a.model, a.chunk_size)
    print({k: v for k, v in res.items() if k != "rejects"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
