"""Batched embedding of decoded faces and of image tables, in bounded memory."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.data import schemas
from pipeline.data.manifest import empty_rejects
from pipeline.faces.loader import load_table, preprocessing_from_meta
from pipeline.faces.policy import FacePolicy, Mode
from pipeline.model.artifacts import LoadedModel
from pipeline.model.encoder import Encoder
from pipeline.model.fold import inference_copy
from pipeline.model.runtime import OpenCVRunner, cv_threads, opencv_runner, use_opencv

log = logging.getLogger(__name__)


def to_input(images: np.ndarray, mean: tuple[float, ...] = (0.5,) * 3, std: tuple[float, ...] = (0.5,) * 3) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


CPU_BATCH = 32  # faces per forward pass on CPU: 1.5x the images/s of 256 on 2 cores (bench/fold_speed.py)
ACCEL_BATCH = 256


@torch.inference_mode()
def embed_array(encoder: Encoder, images: np.ndarray, *, batch_size: int | None = None, flip_tta: bool = True,
                mean: tuple[float, ...] = (0.5,) * 3, std: tuple[float, ...] = (0.5,) * 3,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed decoded faces with the encoder in eval mode.

    The forward passes run on a BatchNorm-folded copy of the encoder (`pipeline.model.fold`; the same embeddings
    within 1e-4, checked on the first batch, else the encoder itself), on CPU exported to OpenCV DNN when that is
    faster and agrees within 1e-4 (`pipeline.model.runtime`; ``FACEPIPE_EMBED_RUNTIME`` picks). The encoder is not
    modified.

    Args:
        images: uint8 (N, S, S, 3).
        batch_size: faces per forward pass; default `CPU_BATCH` on CPU, `ACCEL_BATCH` on an accelerator.
        flip_tta: average the embeddings of the image and its mirror, then re-normalise.
    Returns:
        float32 (N, D), unit L2 norm.
    """
    device = next(encoder.parameters()).device  # batches go where the encoder is (CPU, CUDA or MPS)
    if batch_size is None:
        batch_size = CPU_BATCH if device.type == "cpu" else ACCEL_BATCH
    out = np.zeros((len(images), encoder.embedding_dim), dtype=np.float32)
    net: Encoder | None = None
    runner: OpenCVRunner | None = None
    was_training = encoder.training
    encoder.eval()  # also when folding falls back to the encoder itself
    try:
        with contextlib.ExitStack() as scope:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                if net is None:
                    probe = to_input(chunk[:4], mean, std).to(device)
                    net = inference_copy(encoder, probe)
                    if use_opencv(encoder, device, len(images) * (2 if flip_tta else 1)):
                        runner = opencv_runner(encoder, net, probe)
                        if runner is not None:
                            scope.enter_context(cv_threads(torch.get_num_threads()))
                if runner is not None:
                    e = runner.embed_images(chunk, mean, std, flip_tta)
                else:
                    x = to_input(chunk, mean, std).to(device, non_blocking=True)
                    e = net.embed(x)
                    if flip_tta:
                        e = torch.nn.functional.normalize(e + net.embed(torch.flip(x, dims=[3])), dim=1)
                out[start : start + len(chunk)] = e.float().cpu().numpy()
                if progress is not None:
                    progress(len(chunk))
    finally:
        encoder.train(was_training)
    return out


@dataclass(frozen=True)
class EmbeddedChunk:
    """One chunk of an image table: the rows that embedded, their embeddings, and the rejects."""

    rows: pd.DataFrame
    embeddings: np.ndarray
    rejects: pd.DataFrame


def iter_embed_table(model: LoadedModel, table: pd.DataFrame, *, chunk_size: int = 2048, batch_size: int | None = None,
                     progress: Callable[[int], None] | None = None, mode: Mode | str = Mode.QUERY,
                     already_aligned: bool = False, policy: FacePolicy | None = None) -> Iterator[EmbeddedChunk]:
    """Load faces the model's way (`pipeline.faces.loader`: align when the model was trained on aligned faces)
    and embed an image table chunk by chunk (memory bounded by ``chunk_size``).

    ``mode``: ``enrol`` rejects faces the policy refuses (too small, blurry, turned, ambiguous) with the measured
    value; ``query`` lets them through and reports them. With alignment, each kept row gains the face columns
    (``faces_found``, ``face_score``, ``interocular_px``, ``sharpness``, ``yaw_deg``, ``quality_flags``).
    ``policy``: this call's limits (default `FacePolicy()`).
    """
    pre = model.meta["preprocessing"]
    prep = preprocessing_from_meta(pre, mode=mode, policy=policy)
    for start in range(0, len(table), chunk_size):
        part = table.iloc[start : start + chunk_size]
        faces = load_table(part, prep, already_aligned=already_aligned)
        emb = embed_array(model.encoder, faces.images, batch_size=batch_size, flip_tta=bool(pre["flip_tta"]),
                          mean=tuple(pre["mean"]), std=tuple(pre["std"]))
        if progress is not None:
            progress(len(part))
        rows = part.iloc[faces.keep].drop(columns=["error"], errors="ignore").reset_index(drop=True)
        if len(faces.info.columns):
            rows = pd.concat([rows, faces.info.reset_index(drop=True)], axis=1)
        yield EmbeddedChunk(rows, emb, faces.rejects)


def embed_table(model: LoadedModel, table: pd.DataFrame, *, chunk_size: int = 2048, batch_size: int | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Embed a whole image table. Returns (rows that embedded, float32 (N, D) embeddings, rejects)."""
    rows, embs, rejects = [], [], []
    for chunk in iter_embed_table(model, table, chunk_size=chunk_size, batch_size=batch_size, progress=progress):
        rows.append(chunk.rows)
        embs.append(chunk.embeddings)
        if len(chunk.rejects):
            rejects.append(chunk.rejects)
    dim = model.encoder.embedding_dim
    all_rows = pd.concat(rows, ignore_index=True) if rows else table.iloc[:0]
    all_emb = np.concatenate(embs) if embs else np.zeros((0, dim), dtype=np.float32)
    return all_rows, all_emb, (pd.concat(rejects, ignore_index=True) if rejects else empty_rejects())


def embeddings_table(rows: pd.DataFrame, embeddings: np.ndarray, model_version: str) -> pa.Table:
    """The ``embed`` output contract: image_path, identity, embedding (fixed-size list<float32>), model_version,
    then the face columns of `schemas.FACE` (faces_found, face_score, interocular_px, sharpness, yaw_deg,
    quality_flags; null for a model without alignment)."""
    n, d = embeddings.shape
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).ravel(), type=pa.float32())
    ident = rows["identity"] if "identity" in rows.columns else pd.Series([None] * n)
    face = schemas.conform(rows[[c for c in schemas.FACE if c in rows.columns]].reset_index(drop=True), schemas.FACE)
    columns = {
        "image_path": pa.array(rows["image_path"].astype(str).tolist(), type=pa.string()),
        "identity": pa.array([None if pd.isna(v) else str(v) for v in ident], type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, d),
        "model_version": pa.array([model_version] * n, type=pa.string()),
    }
    face_table = pa.Table.from_pandas(face, preserve_index=False)
    return pa.table({**columns, **{c: face_table.column(c) for c in schemas.FACE}})




def read_embeddings(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Read an ``embed`` output file: (other columns, float32 (N, D) embeddings)."""
    t = pq.read_table(path)
    col = t.column("embedding").combine_chunks()
    d = col.type.list_size if pa.types.is_fixed_size_list(col.type) else len(col[0].as_py())
    emb = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, d)
    return t.drop(["embedding"]).to_pandas(), emb
