"""A teacher read from a Parquet file of embeddings keyed by image sha256, so any model a user has can teach.

File format: columns ``image_sha256`` (string, the sha256 hex of the image file's bytes, unique) and
``embedding`` (``fixed_size_list<float32>[D]``; a plain list of floats of one length is accepted too).
Embeddings are L2-normalised on load. Name and version come from the file's own sha256, so a changed file is
a different teacher. ``write_precomputed`` writes such a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import ConfigError, DataError, ModelArtifactError
from pipeline.model.teachers.base import Teacher, check_sha256s, l2_normalise

SHA_COL = "image_sha256"
EMB_COL = "embedding"
META_LICENCE = b"facepipe.licence"


def embeddings_table(sha256s: Sequence[str], embeddings: np.ndarray,
                     metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """An Arrow table (``image_sha256`` string, ``embedding`` fixed_size_list<float32>[D])."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(sha256s) or emb.shape[1] < 1:
        raise DataError(f"need (N, D>=1) embeddings for {len(sha256s)} sha256s, got shape {emb.shape}")
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), emb.shape[1])
    schema = pa.schema([(SHA_COL, pa.string()), (EMB_COL, pa.list_(pa.float32(), emb.shape[1]))],
                       metadata=metadata)
    return pa.Table.from_arrays([pa.array(list(sha256s), type=pa.string()), col], schema=schema)


def table_embeddings(table: pa.Table, *, source: object) -> tuple[list[str], np.ndarray]:
    """Read ``(sha256s, float32 (N, D))`` from a table with the two columns; ``source`` names it in errors.

    Raises:
        DataError: a column is missing or of the wrong type, rows have different lengths or are non-finite.
    """
    missing = [c for c in (SHA_COL, EMB_COL) if c not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} (have {', '.join(table.column_names)})")
    shas = table.column(SHA_COL).combine_chunks()
    if not pa.types.is_string(shas.type) and not pa.types.is_large_string(shas.type):
        raise DataError(f"{source}: column {SHA_COL} must be strings, got {shas.type}")
    if shas.null_count:
        raise DataError(f"{source}: column {SHA_COL} has {shas.null_count} null(s)")
    col = table.column(EMB_COL).combine_chunks()
    t = col.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) or \
            not pa.types.is_floating(t.value_type):
        raise DataError(f"{source}: column {EMB_COL} must be a list of floats, got {t}")
    if col.null_count:
        raise DataError(f"{source}: column {EMB_COL} has {col.null_count} null row(s)")
    n = len(col)
    if pa.types.is_fixed_size_list(t):
        dim = t.list_size
    else:
        lengths = np.asarray(col.value_lengths())
        if n and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(f"{source}: embeddings have different lengths ({lengths[0]} and {lengths[bad]} "
                            f"at row {bad})")
        dim = int(lengths[0]) if n else 0
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if flat.size != n * dim:
        raise DataError(f"{source}: embedding column holds null values")
    emb = flat.reshape(n, dim)
    if not np.isfinite(emb).all():
        raise DataError(f"{source}: non-finite embedding at row {int(np.flatnonzero(~np.isfinite(emb).all(1))[0])}")
    return shas.to_pylist(), emb


def write_precomputed(path: str | os.PathLike[str], sha256s: Sequence[str], embeddings: np.ndarray, *,
                      licence: str | None = None) -> Path:
    """Write a precomputed-teacher Parquet file (atomically); returns its path."""
    from pipeline.core.io import write_parquet_atomic

    shas = check_sha256s(sha256s)
    if len(set(shas)) != len(shas):
        raise DataError("duplicate image_sha256 values")
    meta = {META_LICENCE: licence.encode()} if licence else None
    return write_parquet_atomic(embeddings_table(shas, embeddings, meta), path)


class PrecomputedTeacher(Teacher):
    """Embeddings looked up by image sha256 in a Parquet file (see module docstring).

    Args:
        path: the Parquet file.
        licence: licence of the embeddings/model (default: the file's ``facepipe.licence`` metadata or
            ``"unknown"``).
    Raises:
        DataError: the file is missing, unreadable, malformed, has duplicate or invalid sha256s.
    """

    needs_crops = False

    def __init__(self, path: str | os.PathLike[str], *, licence: str | None = None) -> None:
        from pipeline.core.io import file_digest

        p = Path(path)
        if not p.is_file():
            raise DataError(f"precomputed teacher file {p} does not exist")
        digest = file_digest(p)
        try:
            table = pq.read_table(p)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{p}: not a readable Parquet file ({exc})") from exc
        shas, emb = table_embeddings(table, source=p)
        if not shas or emb.shape[1] == 0:
            raise DataError(f"{p}: no rows or zero-length embeddings")
        try:
            shas = check_sha256s(shas)
        except DataError as exc:
            raise DataError(f"{p}: {exc}") from None
        index = {s: i for i, s in enumerate(shas)}
        if len(index) != len(shas):
            raise DataError(f"{p}: {len(shas) - len(index)} duplicate image_sha256 value(s)")
        self.path = p
        self.name = f"precomputed-{digest[:12]}"
        self.files = {p.name: digest}
        self.embedding_dim = emb.shape[1]
        meta = table.schema.metadata or {}
        self.licence = licence or meta.get(META_LICENCE, b"unknown").decode()
        self._index = index
        try:
            self._emb = l2_normalise(emb, what=str(p))
        except ModelArtifactError as exc:
            raise DataError(str(exc)) from None

    @property
    def version(self) -> str:
        (fname, digest), = self.files.items()
        return f"precomputed:{fname}@sha256:{digest}"

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, sha256: object) -> bool:
        return isinstance(sha256, str) and sha256.lower() in self._index

    def spec(self) -> tuple[str, dict[str, Any]]:
        return "precomputed", {"path": str(self.path), "licence": self.licence}

    def _embed_raw(self, crops: np.ndarray) -> np.ndarray:
        raise ConfigError(f"teacher {self.name} has no model: it looks embeddings up by image sha256 "
                          "(use embed_keyed(sha256s))")

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self._embed_raw(crops)

    def embed_keyed(self, sha256s: Sequence[str], crops: np.ndarray | None = None) -> np.ndarray:
        """Rows for ``sha256s`` (``crops`` is ignored): float32 (N, D), unit norm.

        Raises:
            DataError: a sha256 is invalid or not in the file (the message counts them and names the first).
        """
        shas = check_sha256s(sha256s)
        missing = [s for s in shas if s not in self._index]
        if missing:
            raise DataError(f"{self.path}: {len(missing)} of {len(shas)} image(s) have no precomputed embedding "
                            f"(first: {missing[0]})")
        return self._emb[[self._index[s] for s in shas]].copy()
