"""CLI commands about the gallery store: enroll, verify, identify, remove, info.

``--aligned`` (enroll / verify / identify: the inputs are aligned crops, detection is skipped), ``--policy KEY=VALUE``
(this call's face limits) and ``--report DIR`` (identify: the review page, `pipeline.serve.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from indexes import GalleryStore
from pipeline.cli.common import progress, table, write_rejects
from pipeline.core.audit import AuditLog
from pipeline.core.errors import DataError
from pipeline.core.io import write_parquet_atomic
from pipeline.data.manifest import read_images
from pipeline.faces.policy import FacePolicy, face_policy
from pipeline.serve.gallery import (
    enroll_chunk,
    identify_chunk,
    open_gallery,
    read_probes,
    run_chunked,
    verify_chunk,
)


def cmd_enroll(args: argparse.Namespace, out) -> int:
    images = read_images(args.images, require_identities=True, required=("image_path", "identity"))
    store, model = open_gallery(args.index, args.model, create=True)
    before = len(store)
    t0 = time.monotonic()
    with progress(len(images), "enrol", enabled=not args.quiet) as update:
        added, rejects = run_chunked(partial(enroll_chunk, store, model, aligned=_aligned(args),
                                             policy=_policy(args)), images,
                                     args.chunk_size, update)
    dt = time.monotonic() - t0
    out(f"enrolled {len(added)} image(s) of {added['identity'].nunique() if len(added) else 0} identities "
        f"into {args.index} in {dt:.1f} s; store now holds {len(store)} rows (was {before}), "
        f"{len(store.identities())} identities")
    write_rejects(rejects, Path(args.rejects), out)
    audit_log(args).append("enrol", store=str(Path(args.index).resolve()), model_version=model.model_version,
                           images=len(images), enrolled=len(added), rejected=len(rejects),
                           identities_added=sorted(set(added["identity"].astype(str))) if len(added) else [])
    return 0


def audit_log(args: argparse.Namespace) -> AuditLog:
    """The audit trail of a store: ``--audit-log``, else ``$FACEPIPE_AUDIT_LOG``, else ``<INDEX_DIR>.audit.jsonl``
    beside the store (not inside it: the store's own files are checked by its manifest)."""
    given = getattr(args, "audit_log", None) or os.environ.get("FACEPIPE_AUDIT_LOG")
    index = Path(args.index).resolve()
    return AuditLog(given or index.with_name(index.name + ".audit.jsonl"))


def cmd_audit(args: argparse.Namespace, out) -> int:
    if args.log is None and args.index is None:
        raise DataError("name the trail: --index INDEX_DIR or --log FILE")
    log = audit_log(args) if args.log is None else AuditLog(args.log)
    if not log.path.is_file():
        raise DataError(f"no audit log at {log.path}")
    if args.verify:
        check = log.verify()
        if not check.ok:
            out(f"audit log {log.path}: NOT intact after {check.entries} good entries: {check.problem}")
            return 1
        out(f"audit log {log.path}: intact, {check.entries} entries, hash chain and head agree")
        return 0
    for e in log.entries():
        fields = {k: v for k, v in e.items() if k not in ("seq", "at", "event", "caller", "prev", "hash")}
        out(f"{e['seq']:>5}  {e['at']}  {e['event']:<8} {e['caller'].get('user')}@{e['caller'].get('host')}  "
            f"{json.dumps(fields, sort_keys=True)}")
    return 0


def cmd_verify(args: argparse.Namespace, out) -> int:
    probes = read_probes(args.probes)
    store, model = open_gallery(args.index, args.model)
    with progress(len(probes), "verify", enabled=not args.quiet) as update:
        res, rejects = run_chunked(partial(verify_chunk, store, model, threshold=args.threshold,
                                           aligned=_aligned(args), policy=_policy(args)), probes, args.chunk_size,
                                   update)
    write_parquet_atomic(res, args.out)
    n_match = int(res["match"].sum()) if len(res) else 0
    unknown = int((~res["known"]).sum()) if len(res) else 0
    out(f"verified {len(res)} claim(s): {n_match} match, {len(res) - n_match} no match "
        f"({unknown} claimed an identity not enrolled); threshold "
        f"{f'{res.threshold.iloc[0]:.4f}' if len(res) else '-'} -> {args.out}")
    _say_flagged(res, out)
    write_rejects(rejects, Path(args.out).with_suffix(".rejects.parquet"), out)
    return 0


def cmd_identify(args: argparse.Namespace, out) -> int:
    probes = read_probes(args.probes)
    store, model = open_gallery(args.index, args.model)
    t0 = time.monotonic()
    with progress(len(probes), "identify", enabled=not args.quiet) as update:
        res, rejects = run_chunked(partial(identify_chunk, store, model, top_k=args.top_k, threshold=args.threshold,
                                           aligned=_aligned(args), policy=_policy(args)), probes, args.chunk_size,
                                   update)
    write_parquet_atomic(res, args.out)
    top1 = res[res["rank"] == 1] if len(res) else res
    n_unknown = int((top1["decision"] == "unknown").sum()) if len(res) else 0
    out(f"identified {len(top1)} probe(s) in {time.monotonic() - t0:.1f} s: {len(top1) - n_unknown} matched an "
        f"enrolled identity, {n_unknown} unknown -> {args.out}")
    _say_flagged(top1, out)
    write_rejects(rejects, Path(args.out).with_suffix(".rejects.parquet"), out)
    if getattr(args, "report", None):
        from pipeline.serve.report import write_review_page

        page = write_review_page(res, rejects, store.metadata(), args.report, model=model, probes=probes,
                                 threshold=args.threshold if args.threshold is not None else store.threshold,
                                 aligned=_aligned(args))
        out(f"review page -> {page}")
    return 0


def _say_flagged(res, out) -> None:
    """One line on probes answered although the enrolment policy would refuse their face (query mode)."""
    flags = res["quality_flags"].dropna() if "quality_flags" in res.columns else []
    flags = [f for f in flags if f]
    if flags:
        counts: dict[str, int] = {}
        for f in flags:
            for code in f.split(","):
                counts[code] = counts.get(code, 0) + 1
        out(f"{len(flags)} probe(s) answered with poor faces (column quality_flags): "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _aligned(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "aligned", False))


def _policy(args: argparse.Namespace) -> FacePolicy | None:
    """``--policy KEY=VALUE`` pairs -> this call's FacePolicy (None: the defaults)."""
    pairs = getattr(args, "policy", None) or []
    return face_policy(pairs) if pairs else None


def cmd_remove(args: argparse.Namespace, out) -> int:
    if args.registry is not None:  # the registry lives above the library: its erasure runs as the forget flow
        env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **os.environ}
        return subprocess.call([sys.executable, "-m", "flows.forget", "--registry", args.registry, "--identity",
                                args.identity], env=env)
    store = GalleryStore.open(args.index)
    n = store.remove_identity(args.identity)
    if n == 0:
        out(f"{args.identity!r} is not enrolled in {args.index}; nothing removed")
        return 1
    out(f"removed {args.identity!r}: {n} row(s) deleted from index, metadata and embeddings; "
        f"{len(store)} rows remain")
    audit_log(args).append("remove", store=str(Path(args.index).resolve()), identity=args.identity, rows=n,
                           model_version=store.model_version)
    return 0


def cmd_info(args: argparse.Namespace, out) -> int:
    store = GalleryStore.open(args.index)
    if args.check:
        store.verify_integrity()
    info = store.info()
    if args.json:
        out(json.dumps(info, indent=2, default=str))
        return 0
    out(table([(k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)) for k, v in info.items()]))
    if args.check:
        out("integrity check: all files match their recorded checksums")
    return 0
