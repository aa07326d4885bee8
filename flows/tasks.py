"""Prefect tasks of the enrol and lookup flows: each wraps `pipeline.serve.gallery` calls. Retries only on I/O.

Tasks take paths and plain tables (not open models or stores) so they can run in another process
(a Dask worker); the model, the store and its known image hashes are opened once per process.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture

from indexes import GalleryStore
from lifecycle import live
from lifecycle.registry import ModelRegistry
from pipeline.core.errors import DataError
from pipeline.core.io import write_parquet_atomic
from pipeline.data import schemas
from pipeline.data.manifest import read_images
from pipeline.model.artifacts import LoadedModel, load_model
from pipeline.serve import gallery
from pipeline.serve.report import write_review_page

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def _is_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the failure was an OSError (disk, network file system), never a bad input."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _is_io_error}


def windowed(submit: Callable[[T], PrefectFuture[R]], items: Iterable[T], max_in_flight: int) -> Iterator[R]:
    """Submit ``items`` with at most ``max_in_flight`` running; yield results in submission order.

    Memory stays bounded by the window whatever the input size, and results come back in input order
    whether the task runner is threads or a Dask cluster.
    """
    pending: deque[PrefectFuture[R]] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= max_in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------- per-process caches
@functools.lru_cache(maxsize=4)
def _model(model_dir: str, stamp: int) -> LoadedModel:
    return load_model(model_dir)


def cached_model(model_dir: str) -> LoadedModel:
    """The model at ``model_dir``, loaded once per process (reloaded if model.json changes)."""
    return _model(str(model_dir), (Path(model_dir) / "model.json").stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def cached_store(index_dir: str) -> GalleryStore:
    """An open store (it refreshes itself when another writer commits)."""
    return GalleryStore.open(index_dir)


@functools.lru_cache(maxsize=2)
def _known(index_dir: str, stamp: int) -> frozenset[str]:
    return frozenset(cached_store(index_dir).metadata()["image_sha256"])


def known_sha256(index_dir: str) -> frozenset[str]:
    """sha256 of every image in the store (empty if it does not exist yet), cached per store generation."""
    manifest = Path(index_dir) / "manifest.json"
    return _known(str(index_dir), manifest.stat().st_mtime_ns) if manifest.is_file() else frozenset()


# ----------------------------------------------------------------- where enrolments and lookups go
@dataclass(frozen=True)
class Target:
    """A store and the model of its embeddings; ``registry`` set when they are the registry's live pair."""

    index_dir: str
    model_dir: str
    model_version: str
    registry: str | None = None


@task(cache_policy=NONE, **IO_RETRIES)
def resolve_target(index: str | None, model: str | None, registry: str | None, create: bool = False) -> Target:
    """The live pair of ``registry``, or the store ``index`` (created with ``model`` if asked)."""
    if registry is not None:
        if index is not None or model is not None:
            raise DataError("pass either --registry or --index/--model, not both")
        reg = ModelRegistry.open(registry)
        pair = reg.require_current()
        return Target(str(reg.store_dir(pair.store)), str(reg.model_dir(pair.model_version)), pair.model_version,
                      str(reg.root))
    if index is None:
        raise DataError("name a gallery: --index INDEX_DIR (with --model for a new one) or --registry DIR")
    store, loaded = gallery.open_gallery(index, model, create=create)
    return Target(str(store.path), str(loaded.path), loaded.model_version)


@task(cache_policy=NONE, **IO_RETRIES)
def read_table(source: str, require_identities: bool) -> pd.DataFrame:
    """Read an image folder or manifest into an image table."""
    if require_identities:
        return read_images(source, require_identities=True, required=("image_path", "identity"))
    return gallery.read_probes(source)


# ----------------------------------------------------------------- enrolment
@task(cache_policy=NONE, **IO_RETRIES)
def embed_images(target: Target, chunk: pd.DataFrame) -> gallery.EnrolBatch:
    """Hash + embed one chunk, skipping images the target store already holds (so a re-run embeds nothing)."""
    return gallery.embed_for_enrolment(cached_model(target.model_dir), chunk, known_sha256(target.index_dir))


@task(cache_policy=NONE, **IO_RETRIES)
def commit_batch(target: Target, batch: gallery.EnrolBatch) -> gallery.ChunkResult:
    """One atomic commit of an embedded chunk (into the registry's live store, if that is the target)."""
    if target.registry is not None:
        return live.commit_to_registry(ModelRegistry.open(target.registry), batch)
    return gallery.commit_enrolment(cached_store(target.index_dir), batch)


# ----------------------------------------------------------------- lookup
@dataclass(frozen=True)
class LookupPart:
    """What a lookup chunk left behind: its results file (None if no rows), counts, and its rejects."""

    path: str | None
    counts: dict[str, int]
    rejects: pd.DataFrame


def lookup_counts(mode: str, res: pd.DataFrame) -> dict[str, int]:
    if mode == "verify":
        return {"claims": len(res), "match": int(res["match"].sum()) if len(res) else 0}
    top1 = res[res["rank"] == 1] if len(res) else res
    identified = int((top1["decision"] != "unknown").sum()) if len(res) else 0
    return {"probes": len(top1), "identified": identified, "unknown": len(top1) - identified}


@task(cache_policy=NONE, **IO_RETRIES)
def lookup_chunk(target: Target, chunk: pd.DataFrame, mode: str, top_k: int, threshold: float | None,
                 part_path: str) -> LookupPart:
    """Verify or identify one chunk of probes; write its results to ``part_path`` (bounded memory)."""
    store, model = cached_store(target.index_dir), cached_model(target.model_dir)
    if mode == "verify":
        r = gallery.verify_chunk(store, model, chunk, threshold=threshold)
    else:
        r = gallery.identify_chunk(store, model, chunk, top_k=top_k, threshold=threshold)
    if len(r.results):
        write_parquet_atomic(r.results, part_path)
    return LookupPart(part_path if len(r.results) else None, lookup_counts(mode, r.results), r.rejects)


STALE_PARTS_S = 24 * 3600  # a parts folder untouched this long belongs to a dead run


def parts_folder(out: str, run_id: str) -> Path:
    """The part files of ONE lookup run: ``.<out name>.parts-<run id>`` beside ``out``, so two runs writing the
    same output (or a crashed run's leftovers) never share parts. Folders of dead runs (untouched for a day)
    are removed; younger ones may belong to a running lookup and are left alone."""
    dest = Path(out)
    for old in dest.parent.glob(f".{dest.name}.parts*"):
        if old.is_dir() and time.time() - old.stat().st_mtime > STALE_PARTS_S:
            shutil.rmtree(old, ignore_errors=True)
            log.info("removed the parts folder of a dead lookup run: %s", old)
    return dest.parent / f".{dest.name}.parts-{run_id}"


@task(cache_policy=NONE, **IO_RETRIES)
def merge_parts(parts: list[str], out: str, mode: str, parts_dir: str) -> str:
    """Concatenate this run's part files in order into ``out`` (atomic), then delete its parts folder.
    Idempotent: a retry after the folder was deleted finds ``out`` written and does nothing."""
    folder = Path(parts_dir)
    if parts and not folder.exists() and Path(out).exists():
        return out  # merged and cleaned by an earlier attempt of this task
    schema = schemas.VERIFY if mode == "verify" else schemas.IDENTIFY
    gallery.concat_parquet(parts, out, empty=schemas.empty(schema))
    shutil.rmtree(folder, ignore_errors=True)
    return out


@task(cache_policy=NONE, **IO_RETRIES)
def write_table(table: pd.DataFrame, path: str) -> str:
    write_parquet_atomic(table, path)
    return str(Path(path))


# ----------------------------------------------------------------- artifacts
def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of a table (the columns of the first row)."""
    if not rows:
        return []
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return out + ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |" for r in rows]


def story(message: str, *args: Any) -> None:
    """One line of the run's domain story: to the flow-run log on the Prefect server (the run logger) inside a
    flow or task run, to this module's log outside one."""
    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        logger = log
    logger.info(message, *args)


@task(cache_policy=NONE)
def publish(title: str, counts: dict[str, Any], rejects: pd.DataFrame, key: str, notes: str = "") -> None:
    """A markdown summary (counts, notes, first rejects) and table artifacts (counts; rejects); the counts and the
    first reject also go to the run log."""
    story("%s: %s", title, ", ".join(f"{k}={v}" for k, v in counts.items()))
    if len(rejects):
        first = rejects.iloc[0]
        story("%s: %d rejected input(s); first: %s: %s", title, len(rejects), first["image_path"], first["error"])
    lines = [f"# {title}", "", *markdown_table([{"what": k, "value": v} for k, v in counts.items()])]
    if notes:
        lines += ["", notes]
    if len(rejects):
        lines += ["", f"## Rejects ({len(rejects)})", ""]
        lines += markdown_table([{"image_path": r.image_path, "error": r.error} for r in rejects.head(20).itertuples()])
    create_markdown_artifact("\n".join(lines), key=key, description=title)
    create_table_artifact([{"what": k, "value": str(v)} for k, v in counts.items()], key=f"{key}-counts",
                          description=f"{title}: counts")
    if len(rejects):
        create_table_artifact(rejects.head(1000).astype(str).to_dict("records"), key=f"{key}-rejects",
                              description=f"{title}: rejected images (first 1000)")


@task(cache_policy=NONE, **IO_RETRIES)
def write_report(target: Target, results_path: str, rejects: pd.DataFrame, probes: pd.DataFrame, report_dir: str,
                 threshold: float | None) -> str:
    """The identify review page (`pipeline.serve.report`) of a lookup, and a link to it as an artifact."""
    store = cached_store(target.index_dir)
    page = write_review_page(pd.read_parquet(results_path), rejects, store.metadata(), report_dir,
                             model=cached_model(target.model_dir), probes=probes,
                             threshold=store.threshold if threshold is None else threshold)
    create_markdown_artifact(f"Review page: [{page}](file://{Path(page).resolve()})", key="lookup-review",
                             description="probes beside their top-k gallery faces, unknowns and rejects first")
    return str(page)


def check_reject_share(what: str, rejected: pd.DataFrame, total: int, fail_share: float) -> None:
    """End the run Failed (DataError: one line, exit 2 by hand) when ``rejected`` is at least ``fail_share`` of
    the ``total`` inputs; everything else was already written."""
    if total and len(rejected) / total >= fail_share:
        first = rejected.iloc[0]
        raise DataError(f"{what} rejected {len(rejected)} of {total} input(s) ({len(rejected) / total:.0%}), at or "
                        f"above [rejects] fail_share={fail_share:g}; first: {first['image_path']}: {first['error']}")
