"""The bridge from images to the gallery store: embed with a model, then enrol / verify / identify.

The only pipeline module (with the CLI and demo) that imports ``indexes``; the CLI and the Prefect
flows both call it, so a flow's results equal the CLI's by construction. Work is done in chunks
(bounded memory); each chunk returns its own rejects, and a bad image never stops a batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from indexes import GalleryStore
from pipeline.artifacts import LoadedModel, load_model
from pipeline.data.images import sha256_file
from pipeline.data.manifest import empty_rejects, read_images
from pipeline.embed import iter_embed_table, read_embeddings
from pipeline.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkResult:
    """Results of one chunk: a table of outcomes and the rejected inputs (image_path, error)."""

    results: pd.DataFrame
    rejects: pd.DataFrame


def open_gallery(index_dir: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None,
                 *, create: bool = False) -> tuple[GalleryStore, LoadedModel]:
    """Open (or create) a store and the model whose embeddings it holds.

    ``model_dir`` defaults to the model path recorded in the store. The store refuses a model of
    another version (``ModelVersionMismatch``) with a message saying how to re-embed.
    """
    index = Path(index_dir)
    exists = (index / "manifest.json").is_file()
    if not exists and not create:
        raise DataError(f"{index} is not a gallery store (no manifest.json); enrol first with `facepipe enroll`")
    if model_dir is None:
        if not exists:
            raise DataError("a new gallery needs --model MODEL_DIR")
        model_dir = GalleryStore.open(index).model_path
        if not model_dir:
            raise DataError(f"{index} does not record its model path; pass --model MODEL_DIR")
    model = load_model(model_dir)
    if exists:
        store = GalleryStore.open(index, model_version=model.model_version)
    else:
        store = GalleryStore.create(index, model_version=model.model_version,
                                    embedding_dim=int(model.meta["embedding_dim"]), threshold=model.threshold,
                                    model_path=str(Path(model_dir).resolve()))
    return store, model


def chunks(table: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    """Consecutive row chunks of a table."""
    for start in range(0, len(table), size):
        yield table.iloc[start : start + size].reset_index(drop=True)


def _embed(model: LoadedModel, table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Embed one chunk: from images, or from a precomputed ``embedding`` column (checked for the model)."""
    if "embedding" in table.columns:
        versions = set(table.get("model_version", pd.Series([model.model_version])).dropna())
        if versions - {model.model_version}:
            raise DataError(f"probe embeddings were made by model(s) {sorted(versions)}, not {model.model_version}; "
                            "re-embed the probes with this model")
        emb = np.stack([np.asarray(v, dtype=np.float32) for v in table["embedding"]])
        return table.drop(columns=["embedding"]), emb, empty_rejects()
    (chunk,) = list(iter_embed_table(model, table, chunk_size=max(1, len(table))))
    return chunk.rows, chunk.embeddings, chunk.rejects


def enroll_chunk(store: GalleryStore, model: LoadedModel, table: pd.DataFrame) -> ChunkResult:
    """Embed and enrol one chunk (identity + image_path rows) in ONE atomic commit.

    Results: the added rows (row_id, identity, image_path, image_sha256). Duplicates of an already
    enrolled image (same sha256) are skipped and reported in rejects.
    """
    rows, emb, rejects = _embed(model, table)
    if rows.empty:
        return ChunkResult(pd.DataFrame(columns=["row_id", "identity", "image_path", "image_sha256"]), rejects)
    shas = [sha256_file(p) for p in rows["abs_path"]]
    res = store.enroll(emb, rows["identity"].astype(str).tolist(), rows["image_path"].astype(str).tolist(), shas,
                       model_version=model.model_version)
    dup = res.duplicates
    if len(dup):
        dup_rejects = pd.DataFrame({
            "image_path": dup["image_path"].astype(str),
            "error": [f"duplicate image (sha256 {s[:12]}...) already enrolled as row {r} of {i!r}"
                      for s, r, i in zip(dup["image_sha256"], dup["existing_row_id"], dup["existing_identity"])],
        })
        rejects = pd.concat([rejects, dup_rejects], ignore_index=True)
    return ChunkResult(res.added, rejects)


def identify_chunk(store: GalleryStore, model: LoadedModel, table: pd.DataFrame, *, top_k: int = 5,
                   threshold: float | None = None) -> ChunkResult:
    """1:N with open-set rejection for one chunk of probes.

    Results: image_path, rank, identity, score, decision, model_version (top_k rows per probe).
    """
    rows, emb, rejects = _embed(model, table)
    if rows.empty:
        return ChunkResult(pd.DataFrame(columns=["image_path", "rank", "identity", "score", "decision",
                                                 "model_version"]), rejects)
    res = store.identify(emb, model_version=model.model_version, top_k=top_k, threshold=threshold)
    res.insert(0, "image_path", rows["image_path"].to_numpy()[res["query_index"].to_numpy()])
    res = res.drop(columns=["query_index"])
    res["model_version"] = model.model_version
    return ChunkResult(res, rejects)


def verify_chunk(store: GalleryStore, model: LoadedModel, table: pd.DataFrame, *,
                 threshold: float | None = None) -> ChunkResult:
    """1:1 claims for one chunk (rows need ``claimed_identity``).

    Results: the probe's columns + score (cosine), threshold, match (bool), known, model_version.
    """
    if "claimed_identity" not in table.columns:
        raise DataError(f"verify probes need a 'claimed_identity' column; found {list(table.columns)}")
    rows, emb, rejects = _embed(model, table)
    if rows.empty:
        return ChunkResult(pd.DataFrame(columns=["image_path", "claimed_identity", "score", "threshold", "match"]),
                           rejects)
    res = store.verify(emb, rows["claimed_identity"].astype(str).tolist(), model_version=model.model_version,
                       threshold=threshold)
    probe_cols = [c for c in rows.columns if c not in ("abs_path", "model_version", "embedding")
                  and not (c == "identity" and rows[c].isna().all())]
    out = rows[probe_cols].reset_index(drop=True).copy()
    for col in ("score", "threshold", "match", "known"):
        out[col] = res[col].to_numpy()
    out["model_version"] = model.model_version
    return ChunkResult(out, rejects)


def read_probes(source: str | os.PathLike[str]) -> pd.DataFrame:
    """Probes from an image folder, a CSV/Parquet manifest, or an ``embed`` output (with ``embedding``)."""
    s = Path(source)
    if s.is_file() and s.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        if "embedding" in pq.read_schema(s).names:
            meta, emb = read_embeddings(s)
            meta["embedding"] = list(emb)
            meta["abs_path"] = meta["image_path"]
            return meta
    return read_images(s)


def run_chunked(fn: Callable[[pd.DataFrame], ChunkResult], table: pd.DataFrame, chunk_size: int,
                progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply a chunk function over a table; concatenate results and rejects."""
    results, rejects = [], []
    for part in chunks(table, chunk_size):
        r = fn(part)
        results.append(r.results)
        if len(r.rejects):
            rejects.append(r.rejects)
        if progress is not None:
            progress(len(part))
    res = pd.concat(results, ignore_index=True) if results else pd.DataFrame()
    return res, (pd.concat(rejects, ignore_index=True) if rejects else empty_rejects())
