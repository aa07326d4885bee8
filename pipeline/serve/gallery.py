"""The bridge from images to the gallery store: embed with a model, then enrol / verify / identify.

The only pipeline module (with the CLI and demo) that imports ``indexes``; the CLI and the Prefect
flows both call it, so a flow's results equal the CLI's by construction. Work is done in chunks
(bounded memory); each chunk returns its own rejects, and a bad image never stops a batch.

Face policy (models trained on aligned faces): enrolment embeds in ``Mode.ENROL`` (no face, an ambiguous
second face, too small, low detector score, blurry or turned faces become rejects whose ``error`` names the
reason, the measured value and the limit); verify / identify embed in ``Mode.QUERY`` (only "no face" and
unreadable files are rejects; the others go through and their rows carry ``faces_found``, the quality
columns and ``quality_flags``). ``aligned=True`` says the inputs are aligned crops already (no detection).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from indexes import GalleryStore
from pipeline.core.errors import DataError
from pipeline.core.io import atomic_path, file_digest, write_parquet_atomic
from pipeline.data import schemas
from pipeline.data.manifest import empty_rejects, read_images
from pipeline.faces.loader import QUALITY_COLUMNS
from pipeline.faces.policy import FacePolicy, Mode
from pipeline.model.artifacts import LoadedModel, load_model
from pipeline.model.embed import iter_embed_table, read_embeddings

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


def _embed(model: LoadedModel, table: pd.DataFrame, *, mode: Mode | str = Mode.QUERY,
           aligned: bool = False, policy: FacePolicy | None = None) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Embed one chunk: from images (faces made the model's way, under ``mode``; ``aligned``: the files are
    aligned crops already), or from a precomputed ``embedding`` column (checked for the model)."""
    if "embedding" in table.columns:
        versions = set(table.get("model_version", pd.Series([model.model_version])).dropna())
        if versions - {model.model_version}:
            raise DataError(f"probe embeddings were made by model(s) {sorted(versions)}, not {model.model_version}; "
                            "re-embed the probes with this model")
        emb = np.stack([np.asarray(v, dtype=np.float32) for v in table["embedding"]])
        return table.drop(columns=["embedding"]), emb, empty_rejects()
    # face columns of an earlier embedding (a batch re-embedded by another model) are measured again
    table = table.drop(columns=[c for c in QUALITY_COLUMNS if c in table.columns])
    (chunk,) = list(iter_embed_table(model, table, chunk_size=max(1, len(table)), mode=Mode(mode),
                                     already_aligned=aligned, policy=policy))
    return chunk.rows, chunk.embeddings, chunk.rejects


@dataclass(frozen=True)
class EnrolBatch:
    """Embedded images ready to commit: ``rows`` (image table + ``image_sha256``), float32 (N, D) embeddings
    made by ``model_version``, rejects, and how many rows were skipped as already enrolled."""

    rows: pd.DataFrame
    embeddings: np.ndarray
    rejects: pd.DataFrame
    model_version: str
    skipped: int = 0


def _sha_or_none(path: object) -> str | None:
    try:
        return file_digest(str(path))
    except (OSError, TypeError):
        return None  # decoding reports the reason as a reject


def embed_for_enrolment(model: LoadedModel, table: pd.DataFrame, known_sha256: Collection[str] = (), *,
                        aligned: bool = False, mode: Mode | str = Mode.ENROL,
                        policy: FacePolicy | None = None) -> EnrolBatch:
    """Hash and embed one chunk of an image table, skipping images whose sha256 is in ``known_sha256``.

    ``mode`` is ``Mode.ENROL`` (the face policy rejects bad faces, naming the measured value and the limit);
    re-embedding images that are enrolled already uses ``Mode.QUERY`` (`reembed_chunk`). ``aligned``: the
    files are aligned crops (no detection). ``policy``: this call's face limits (default `FacePolicy()`).

    An ``image_sha256`` column already in ``table`` (e.g. from a store's metadata) is what the file must
    still hash to: a file that changed is rejected ("image changed since enrolment").
    """
    table = table.rename(columns={"image_sha256": "expected_sha256"}).assign(
        image_sha256=[_sha_or_none(p) for p in table["abs_path"]])
    known = table["image_sha256"].isin(set(known_sha256))
    changed = table["image_sha256"].notna() & table.get("expected_sha256", table["image_sha256"]).ne(
        table["image_sha256"])
    todo = table[~known & ~changed].reset_index(drop=True)
    if todo.empty:
        rows, emb, rejects = todo, np.zeros((0, model.encoder.embedding_dim), np.float32), empty_rejects()
    else:
        rows, emb, rejects = _embed(model, todo, mode=mode, aligned=aligned, policy=policy)
    if changed.any():
        rejects = pd.concat([rejects, pd.DataFrame({"image_path": table.loc[changed, "image_path"].astype(str),
                                                    "error": "image changed since enrolment (sha256 differs)"})],
                            ignore_index=True)
    rows = rows.drop(columns=["expected_sha256"], errors="ignore")
    missing_sha = rows["image_sha256"].isna()
    if missing_sha.any():  # decoded now although unreadable a moment ago: hash again
        rows.loc[missing_sha, "image_sha256"] = [file_digest(p) for p in rows.loc[missing_sha, "abs_path"]]
    return EnrolBatch(rows, emb, rejects, model.model_version, skipped=int(known.sum()))


def commit_enrolment(store: GalleryStore, batch: EnrolBatch) -> ChunkResult:
    """Enrol an embedded batch in ONE atomic commit. The store keeps the ABSOLUTE image path, so the gallery
    can be re-embedded with a new model later (`reembed_chunk`, `sync_store`).

    Results: the added rows (row_id, identity, image_path, image_sha256, then the face columns of
    `schemas.FACE`, null for a model without alignment). Images already enrolled (same sha256) are skipped and
    reported in rejects under the path the user gave.
    """
    rows, rejects = batch.rows, batch.rejects
    if rows.empty:
        return ChunkResult(schemas.empty(schemas.ENROLLED), schemas.conform(rejects, schemas.REJECTS))
    res = store.enroll(batch.embeddings, rows["identity"].astype(str).tolist(), rows["abs_path"].astype(str).tolist(),
                       rows["image_sha256"].astype(str).tolist(), model_version=batch.model_version)
    dup = res.duplicates
    if len(dup):
        given = dict(zip(rows["abs_path"].astype(str), rows["image_path"].astype(str)))
        dup_rejects = pd.DataFrame({
            "image_path": [given.get(p, p) for p in dup["image_path"].astype(str)],
            "error": [f"duplicate image (sha256 {s[:12]}...) already enrolled as row {r} of {i!r}"
                      for s, r, i in zip(dup["image_sha256"], dup["existing_row_id"], dup["existing_identity"])],
        })
        rejects = pd.concat([rejects, dup_rejects], ignore_index=True)
    added = res.added
    face = [c for c in schemas.FACE if c in rows.columns]
    if face and len(added):
        by_sha = rows.drop_duplicates("image_sha256").set_index("image_sha256")[face]
        added = added.join(by_sha, on="image_sha256")
    return ChunkResult(schemas.conform(added, schemas.ENROLLED), schemas.conform(rejects, schemas.REJECTS))


def enroll_chunk(store: GalleryStore, model: LoadedModel, table: pd.DataFrame, *, aligned: bool = False,
                 policy: FacePolicy | None = None) -> ChunkResult:
    """Embed (``Mode.ENROL``) and enrol one chunk (identity + image_path rows) in ONE atomic commit (see
    `commit_enrolment`); faces the policy refuses are rejects naming the measured value and the limit.
    ``aligned``: the files are aligned crops already (no detection; blur is still checked)."""
    return commit_enrolment(store, embed_for_enrolment(model, table, aligned=aligned, policy=policy))


def identify_chunk(store: GalleryStore, model: LoadedModel, table: pd.DataFrame, *, top_k: int = 5,
                   threshold: float | None = None, aligned: bool = False,
                   policy: FacePolicy | None = None) -> ChunkResult:
    """1:N with open-set rejection for one chunk of probes (``Mode.QUERY``: poor faces are answered, flagged).

    Results: image_path, rank, identity, score, decision, model_version (top_k rows per probe), then the
    probe's face columns (`schemas.FACE`, repeated on its k rows; null without alignment).
    """
    rows, emb, rejects = _embed(model, table, mode=Mode.QUERY, aligned=aligned, policy=policy)
    if rows.empty:
        return ChunkResult(schemas.empty(schemas.IDENTIFY), schemas.conform(rejects, schemas.REJECTS))
    res = store.identify(emb, model_version=model.model_version, top_k=top_k, threshold=threshold)
    qi = res["query_index"].to_numpy()
    res.insert(0, "image_path", rows["image_path"].to_numpy()[qi])
    res = res.drop(columns=["query_index"])
    res["model_version"] = model.model_version
    for col in schemas.FACE:
        if col in rows.columns:
            res[col] = rows[col].to_numpy()[qi]
    return ChunkResult(schemas.conform(res, schemas.IDENTIFY), schemas.conform(rejects, schemas.REJECTS))


def verify_chunk(store: GalleryStore, model: LoadedModel, table: pd.DataFrame, *,
                 threshold: float | None = None, aligned: bool = False,
                 policy: FacePolicy | None = None) -> ChunkResult:
    """1:1 claims for one chunk (rows need ``claimed_identity``; ``Mode.QUERY``: poor faces are answered, flagged).

    Results: the probe's columns + score (cosine), threshold, match (bool), known, model_version, the face
    columns (`schemas.FACE`; null without alignment).
    """
    if "claimed_identity" not in table.columns:
        raise DataError(f"verify probes need a 'claimed_identity' column; found {list(table.columns)}")
    rows, emb, rejects = _embed(model, table, mode=Mode.QUERY, aligned=aligned, policy=policy)
    if rows.empty:
        return ChunkResult(schemas.conform(rows.drop(columns=["abs_path", "model_version", "embedding"], errors="ignore"),
                                           schemas.VERIFY), schemas.conform(rejects, schemas.REJECTS))
    res = store.verify(emb, rows["claimed_identity"].astype(str).tolist(), model_version=model.model_version,
                       threshold=threshold)
    probe_cols = [c for c in rows.columns if c not in ("abs_path", "model_version", "embedding")
                  and not (c == "identity" and rows[c].isna().all())]
    out = rows[probe_cols].reset_index(drop=True).copy()
    for col in ("score", "threshold", "match", "known"):
        out[col] = res[col].to_numpy()
    out["model_version"] = model.model_version
    return ChunkResult(schemas.conform(out, schemas.VERIFY), schemas.conform(rejects, schemas.REJECTS))


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


# ----------------------------------------------------------------- re-embedding and the model registry
def gallery_images(store: GalleryStore) -> pd.DataFrame:
    """The enrolled images as an image table (image_path, abs_path, identity, image_sha256), by row_id."""
    meta = store.metadata()
    paths = meta["image_path"].astype(str)
    return pd.DataFrame({"image_path": paths, "abs_path": [p if os.path.isabs(p) else None for p in paths],
                         "identity": meta["identity"].astype(str), "image_sha256": meta["image_sha256"].astype(str)})


def missing_images(table: pd.DataFrame) -> pd.DataFrame:
    """Rejects (image_path, error) for rows whose file is not there (or whose stored path is not absolute)."""
    bad = [(p, "stored path is relative; re-enrol it" if a is None else "image file is missing")
           for p, a in zip(table["image_path"], table["abs_path"]) if a is None or not os.path.isfile(a)]
    return pd.DataFrame(bad, columns=["image_path", "error"]) if bad else empty_rejects()


def require_clean(rejects: pd.DataFrame, what: str) -> None:
    """Raise DataError naming the first rejected images (used before any switch: nothing is dropped silently)."""
    if len(rejects):
        shown = "; ".join(f"{r.image_path}: {r.error}" for r in rejects.head(5).itertuples())
        raise DataError(f"{what}: {len(rejects)} enrolled image(s) cannot be re-embedded, e.g. {shown}. Restore them, "
                        "or remove their identities from the live gallery, then retry (production is unchanged)")


def reembed_chunk(model: LoadedModel, table: pd.DataFrame) -> EnrolBatch:
    """Re-embed enrolled images (a `gallery_images` chunk) with ``model``; any missing, unreadable or changed
    image raises DataError, so a gallery is never switched with images silently dropped."""
    require_clean(missing_images(table), "re-embedding")
    # enrolled images passed the policy of their time: a new model re-embeds them in query mode (only a
    # photo where the new model finds no face at all is refused)
    batch = embed_for_enrolment(model, table, mode=Mode.QUERY)
    require_clean(batch.rejects, "re-embedding")
    return batch


def sync_store(source: GalleryStore, target: GalleryStore, model: LoadedModel, chunk_size: int = 1024) -> dict[str, int]:
    """Make ``target`` (embedded with ``model``) hold exactly the images of ``source``: identities whose rows
    differ are removed and re-embedded, images enrolled since are added. Returns counts (added, removed)."""
    src, tgt = gallery_images(source), target.metadata()
    stale = set(tgt.loc[~tgt["image_sha256"].isin(set(src["image_sha256"])), "identity"])
    removed = sum(target.remove_identity(name) for name in sorted(stale))
    todo = src[~src["image_sha256"].isin(set(tgt["image_sha256"])) | src["identity"].isin(stale)]
    require_clean(missing_images(todo), "gallery catch-up")
    added = 0
    for part in chunks(todo, chunk_size):
        added += len(commit_enrolment(target, reembed_chunk(model, part)).results)
    if len(target) != len(source):
        raise DataError(f"gallery catch-up of {target.path}: {len(target)} rows after sync, source has {len(source)}")
    return {"added": added, "removed": removed}


def concat_parquet(parts: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                   empty: pd.DataFrame | None = None) -> Path:
    """Stream Parquet part files (in order) into one file, atomically and durably (`pipeline.core.io.atomic_path`); columns
    missing from a part are null. No parts: ``empty`` (a frame with the right columns) is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = Path(out)
    if not parts:
        return write_parquet_atomic(empty if empty is not None else pd.DataFrame(), dest)
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            t = pq.read_table(part)
            cols = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
                    for f in schema]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
    return dest
