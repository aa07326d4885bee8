"""Prefect tasks: each wraps one library call. Retries only where the work is I/O.

Tasks take paths and plain tables (not open models or stores) so they can run in another
process (e.g. on Dask); the model and store are opened once per process and cached.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from pipeline import gallery
from pipeline.config import Config
from pipeline.data.manifest import read_images
from pipeline.embed import write_parquet_atomic
from pipeline.prepare import TrainingData, prepare_training
from pipeline.train import TrainResult, train

def _is_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the failure was an OSError (disk, network file system), never a bad input."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


@functools.lru_cache(maxsize=4)
def _open(index_dir: str, model_dir: str | None, create: bool, manifest_stamp: int) -> tuple[Any, Any]:
    return gallery.open_gallery(index_dir, model_dir, create=create)


def open_gallery_cached(index_dir: str, model_dir: str | None = None, create: bool = False) -> tuple[Any, Any]:
    """Open a store + model once per process; reopened when the store's manifest changes on disk."""
    manifest = Path(index_dir) / "manifest.json"
    stamp = manifest.stat().st_mtime_ns if manifest.exists() else 0
    return _open(str(index_dir), None if model_dir is None else str(model_dir), create, stamp)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=_is_io_error)
def read_table(source: str, require_identities: bool) -> pd.DataFrame:
    """Read an image folder or manifest into an image table."""
    if require_identities:
        return read_images(source, require_identities=True, required=("image_path", "identity"))
    return gallery.read_probes(source)


@task(cache_policy=NONE)
def prepare_data(data: str, pairs: str | None, cfg: Config) -> TrainingData:
    return prepare_training(data, pairs, cfg)


@task(cache_policy=NONE)
def train_model(cfg: Config, data: TrainingData, out_dir: str) -> TrainResult:
    return train(cfg, data, out_dir)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=_is_io_error)
def enroll_chunk(index_dir: str, model_dir: str | None, chunk: pd.DataFrame) -> gallery.ChunkResult:
    store, model = open_gallery_cached(index_dir, model_dir, create=True)
    return gallery.enroll_chunk(store, model, chunk)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=_is_io_error)
def lookup_chunk(index_dir: str, model_dir: str | None, chunk: pd.DataFrame, mode: str, top_k: int,
                 threshold: float | None) -> gallery.ChunkResult:
    store, model = open_gallery_cached(index_dir, model_dir)
    if mode == "verify":
        return gallery.verify_chunk(store, model, chunk, threshold=threshold)
    return gallery.identify_chunk(store, model, chunk, top_k=top_k, threshold=threshold)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=_is_io_error)
def write_table(table: pd.DataFrame, path: str) -> str:
    write_parquet_atomic(table, path)
    return str(Path(path))


@task(cache_policy=NONE)
def publish(title: str, counts: dict[str, Any], rejects: pd.DataFrame, key: str) -> None:
    """A markdown summary and a table artifact (counts, then the first rejects)."""
    lines = [f"# {title}", "", "| what | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    if len(rejects):
        lines += ["", f"## Rejects ({len(rejects)})", "", "| image_path | error |", "|---|---|"]
        lines += [f"| {r.image_path} | {str(r.error).replace('|', '/')} |" for r in rejects.head(20).itertuples()]
    create_markdown_artifact("\n".join(lines), key=key, description=title)
    create_table_artifact([{"what": k, "value": str(v)} for k, v in counts.items()], key=f"{key}-counts")
