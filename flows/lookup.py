"""Lookup flow: a probes manifest -> 1:1 verify or 1:N identify -> one results Parquet (columns:
`pipeline.data.schemas`).

Chunks run as tasks (on Dask when a scheduler is configured), each writing its results to a part file;
at most ``max_in_flight`` chunks are in memory, so 100k probes run in bounded memory. The parts are
merged in input order, so the file equals the library's own results (`pipeline.serve.gallery`). With
``--registry`` the live pair is read once at the start: a switch during the run does not mix models.
Run: ``python -m flows.lookup --probes FILE [--registry DIR | --index INDEX_DIR] --mode identify --out hits.parquet``;
the registry, chunk sizes and Dask scheduler default to the flows settings (flows/flows.toml).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import pandas as pd
from prefect import flow
from prefect.runtime import flow_run

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
    lookup_chunk,
    merge_parts,
    parts_folder,
    publish,
    read_table,
    resolve_target,
    windowed,
    write_report,
    write_table,
)
from pipeline.core.errors import DataError
from pipeline.data.manifest import empty_rejects
from pipeline.serve.gallery import chunks

MODES = ("verify", "identify")


D = flow_defaults("lookup")  # flows.toml's values (flows.settings.flow_parameters)


@flow(name="lookup", log_prints=False, task_runner=task_runner(dask_address(), check_api=False))
def lookup_flow(probes: str, out: str, mode: str = "identify", index: str | None = None, model: str | None = None,
                registry: str | None = None, top_k: int = 5, threshold: float | None = None,
                chunk_size: int = D["chunk_size"], max_in_flight: int = D["max_in_flight"],
                report: str | None = None, fail_reject_share: float = D["fail_reject_share"]) -> dict[str, Any]:
    """Answer every probe of ``probes`` against a gallery; write ``out`` (Parquet) and ``out``.rejects.parquet;
    with ``report`` (identify only) also the review page ``report``/index.html, linked as an artifact."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(MODES)}")
    if report is not None and mode != "identify":
        raise DataError("--report is a review page of identify results; use --mode identify")
    target = resolve_target(index, model, registry)
    table = read_table(probes, require_identities=False)
    parts_dir = parts_folder(out, flow_run.get_id() or uuid.uuid4().hex)
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
    merge_parts(parts, out, mode, str(parts_dir))
    rejected = pd.concat([r for r in rejects if len(r)] or [empty_rejects()], ignore_index=True)
    if len(rejected):
        write_table(rejected, out.removesuffix(".parquet") + ".rejects.parquet")
    counts = {**counts, "rejected": len(rejected), "model_version": target.model_version}
    publish(f"Lookup ({mode})", counts, rejected, key=f"lookup-{mode}")
    check_reject_share(f"lookup ({mode})", rejected, len(table), fail_reject_share)
    if report is not None:
        counts["report"] = write_report(target, out, rejected, table, report, threshold)
    return {**counts, "out": out, "rejects": rejected}


def parser() -> FlowParser:
    p = FlowParser("lookup", __doc__)
    p.add_argument("--probes", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE.parquet")
    p.add_argument("--mode", choices=MODES, default="identify")
    p.add_setting("--registry", "registry.path", "query the registry's live pair, unless --index is given",
                  metavar="DIR")
    p.add_argument("--index", help="or: a gallery store directory")
    p.add_argument("--model")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threshold", type=float)
    p.add_argument("--report", metavar="DIR", help="identify: write a review page DIR/index.html (+ face thumbnails)")
    p.add_setting("--chunk-size", "chunks.lookup", "probes per task", type=int)
    p.add_setting("--max-in-flight", "chunks.max_in_flight", "tasks at once (bounds memory)", type=int)
    p.add_setting("--fail-reject-share", "rejects.fail_share", "fail the run when at least this share is rejected",
                  type=float)
    p.add_argument("--dask-address", help="run the chunks on this Dask scheduler (default: $FACEPIPE_DASK_ADDRESS, "
                                          "else [dask] address)")
    return p


def run(a: argparse.Namespace, settings: FlowSettings) -> dict[str, Any]:
    params = {**flow_parameters(settings)["lookup"], **given(a, "probes", "out", "mode", "index", "model", "top_k",
                                                             "threshold", "report")}
    if a.registry is None and (a.index is not None or a.model is not None):
        params["registry"] = None  # --index/--model instead of the settings' registry
    res = with_runner(lookup_flow, a.dask_address, settings)(**params)
    return {k: v for k, v in res.items() if k != "rejects"}


def main(argv: list[str] | None = None) -> int:
    return run_main(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
