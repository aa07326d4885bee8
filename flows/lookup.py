"""Lookup flow: a probes manifest -> 1:1 verify or 1:N identify -> one results Parquet (DESIGN.md columns).

Chunks run as tasks (on Dask when a scheduler is configured), each writing its results to a part file;
at most ``max_in_flight`` chunks are in memory, so 100k probes run in bounded memory. The parts are
merged in input order, so the file equals the library's own results (`pipeline.gallery`). With
``--registry`` the live pair is read once at the start: a switch during the run does not mix models.
Run: ``python -m flows.lookup --probes FILE (--registry DIR | --index INDEX_DIR) --mode identify --out hits.parquet``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow

from flows.settings import dask_address, task_runner
from flows.tasks import lookup_chunk, merge_parts, publish, read_table, resolve_target, windowed, write_table
from pipeline.data.manifest import empty_rejects
from pipeline.gallery import chunks

MODES = ("verify", "identify")


@flow(name="lookup", log_prints=False, task_runner=task_runner(dask_address()))
def lookup_flow(probes: str, out: str, mode: str = "identify", index: str | None = None, model: str | None = None,
                registry: str | None = None, top_k: int = 5, threshold: float | None = None, chunk_size: int = 2048,
                max_in_flight: int = 4) -> dict[str, Any]:
    """Answer every probe of ``probes`` against a gallery; write ``out`` (Parquet) and ``out``.rejects.parquet."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(MODES)}")
    target = resolve_target(index, model, registry)
    table = read_table(probes, require_identities=False)
    parts_dir = Path(out).parent / f".{Path(out).name}.parts"
    counts: dict[str, int] = {}
    parts, rejects = [], []
    numbered = enumerate(chunks(table, chunk_size))
    results = windowed(lambda item: lookup_chunk.submit(target, item[1], mode, top_k, threshold,
                                                       str(parts_dir / f"part-{item[0]:06d}.parquet")),
                       numbered, max_in_flight)
    for part in results:
        parts += [part.path] if part.path else []
        counts = {k: counts.get(k, 0) + v for k, v in part.counts.items()}
        rejects.append(part.rejects)
    merge_parts(parts, out, mode)
    rejected = pd.concat([r for r in rejects if len(r)] or [empty_rejects()], ignore_index=True)
    if len(rejected):
        write_table(rejected, out.removesuffix(".parquet") + ".rejects.parquet")
    counts = {**counts, "rejected": len(rejected), "model_version": target.model_version}
    publish(f"Lookup ({mode})", counts, rejected, key=f"lookup-{mode}")
    return {**counts, "out": out, "rejects": rejected}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.lookup", description=lookup_flow.__doc__)
    p.add_argument("--probes", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=MODES, default="identify")
    p.add_argument("--registry", help="query the registry's live pair")
    p.add_argument("--index", help="or: a gallery store directory")
    p.add_argument("--model")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threshold", type=float)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--max-in-flight", type=int, default=4)
    p.add_argument("--dask-address", help="run the chunks on this Dask scheduler")
    a = p.parse_args(argv)
    fl = lookup_flow.with_options(task_runner=task_runner(a.dask_address)) if a.dask_address else lookup_flow
    res = fl(a.probes, a.out, a.mode, a.index, a.model, a.registry, a.top_k, a.threshold, a.chunk_size,
             a.max_in_flight)
    print({k: v for k, v in res.items() if k != "rejects"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
