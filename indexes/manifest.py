"""`manifest.json`: the store's single commit point.

The manifest lists every live segment with its row count, row-id range and the size and sha256 of
each of its files. A file not listed in the current manifest is not part of the store (it is either
a leftover of an interrupted write or an old version awaiting deletion).
Identity names never appear here: they are data and live only in the segments' Parquet files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from indexes.atomic import write_file_atomic
from indexes.config import IndexConfig
from indexes.errors import StoreCorrupt, StoreError

SCHEMA_VERSION = 1
FORMAT_NAME = "facepipe-gallery-store"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "LOCK"
SEGMENTS_DIR = "segments"
ANN_DIR = "ann"
# Store files are named by random hex ids only: manifest content can never address a path outside
# the store (and identity names are never used to build paths).
_FILE_NAME = re.compile(r"^(segments/[0-9a-f]{32}\.(npy|parquet)|ann/[0-9a-f]{32}\.faiss)$")


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class FileEntry:
    """A store file: path relative to the store directory, size in bytes, hex sha256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AnnEntry:
    """A derived approximate index over one segment (rebuildable from the segment's vectors)."""

    file: FileEntry
    kind: str
    description: str
    recall: float
    recall_k: int


@dataclass(frozen=True)
class SegmentEntry:
    """An immutable segment: `rows` embeddings (.npy) and their metadata (.parquet)."""

    id: str
    rows: int
    min_row_id: int
    max_row_id: int
    vectors: FileEntry
    metadata: FileEntry
    ann: AnnEntry | None = None

    def files(self) -> list[FileEntry]:
        """All files of the segment, including its ANN index if any."""
        out = [self.vectors, self.metadata]
        if self.ann is not None:
            out.append(self.ann.file)
        return out


@dataclass(frozen=True)
class Manifest:
    """Parsed `manifest.json` (see module docstring)."""

    model_version: str
    embedding_dim: int
    index: IndexConfig
    created_at: str
    updated_at: str
    model_path: str | None = None
    threshold: float | None = None
    generation: int = 0
    next_row_id: int = 0
    rows: int = 0
    identities: int = 0
    segments: tuple[SegmentEntry, ...] = ()
    ann_recall: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def evolve(self, **changes: Any) -> Manifest:
        """Next generation of this manifest with `changes` applied and `updated_at` set to now."""
        return replace(self, generation=self.generation + 1, updated_at=utc_now_iso(), **changes)

    def referenced_files(self) -> set[str]:
        """Relative names of every file the manifest references."""
        return {entry.name for seg in self.segments for entry in seg.files()}

    def to_json(self) -> str:
        """Serialise (stable key order, human-readable)."""
        doc = {
            "format": FORMAT_NAME,
            "schema_version": self.schema_version,
            "generation": self.generation,
            "model_version": self.model_version,
            "model_path": self.model_path,
            "embedding_dim": self.embedding_dim,
            "threshold": self.threshold,
            "index": self.index.to_dict(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_row_id": self.next_row_id,
            "counts": {"rows": self.rows, "identities": self.identities, "segments": len(self.segments)},
            "segments": [_segment_to_dict(seg) for seg in self.segments],
            "ann_recall": self.ann_recall,
        }
        return json.dumps(doc, indent=1) + "\n"


def _file_to_dict(entry: FileEntry) -> dict[str, Any]:
    return {"name": entry.name, "size": entry.size, "sha256": entry.sha256}


def _segment_to_dict(seg: SegmentEntry) -> dict[str, Any]:
    ann = None
    if seg.ann is not None:
        ann = {"file": _file_to_dict(seg.ann.file), "kind": seg.ann.kind, "description": seg.ann.description,
               "recall": seg.ann.recall, "recall_k": seg.ann.recall_k}
    return {"id": seg.id, "rows": seg.rows, "min_row_id": seg.min_row_id, "max_row_id": seg.max_row_id,
            "vectors": _file_to_dict(seg.vectors), "metadata": _file_to_dict(seg.metadata), "ann": ann}


class _Reader:
    """Typed field access that turns any malformation into StoreCorrupt naming the file and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, what: str) -> StoreCorrupt:
        return StoreCorrupt(
            f"{self.path}: {what}; the manifest is damaged -- restore the store directory from a backup "
            "or re-enrol the gallery into a new store"
        )

    def get(self, doc: Any, key: str, kind: type | tuple[type, ...], where: str, *, nullable: bool = False) -> Any:
        if not isinstance(doc, dict) or key not in doc:
            raise self.fail(f"missing field {where}{key!r}")
        value = doc[key]
        if value is None and nullable:
            return None
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise self.fail(f"field {where}{key!r}={value!r} has the wrong type")
        return value

    def file(self, doc: Any, where: str) -> FileEntry:
        name = self.get(doc, "name", str, where)
        if not _FILE_NAME.match(name):
            raise self.fail(f"field {where}'name'={name!r} is not a store file name")
        size = self.get(doc, "size", int, where)
        sha = self.get(doc, "sha256", str, where)
        if size < 0 or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise self.fail(f"field {where} has an invalid size or sha256")
        return FileEntry(name=name, size=size, sha256=sha)

    def segment(self, doc: Any, i: int) -> SegmentEntry:
        where = f"segments[{i}]."
        ann_doc = self.get(doc, "ann", dict, where, nullable=True)
        ann = None
        if ann_doc is not None:
            ann = AnnEntry(file=self.file(self.get(ann_doc, "file", dict, where + "ann."), where + "ann.file."),
                           kind=self.get(ann_doc, "kind", str, where + "ann."),
                           description=self.get(ann_doc, "description", str, where + "ann."),
                           recall=float(self.get(ann_doc, "recall", (int, float), where + "ann.")),
                           recall_k=self.get(ann_doc, "recall_k", int, where + "ann."))
        seg = SegmentEntry(id=self.get(doc, "id", str, where), rows=self.get(doc, "rows", int, where),
                           min_row_id=self.get(doc, "min_row_id", int, where),
                           max_row_id=self.get(doc, "max_row_id", int, where),
                           vectors=self.file(self.get(doc, "vectors", dict, where), where + "vectors."),
                           metadata=self.file(self.get(doc, "metadata", dict, where), where + "metadata."),
                           ann=ann)
        if seg.rows < 1 or seg.min_row_id > seg.max_row_id:
            raise self.fail(f"segment {seg.id} has rows={seg.rows} and row ids {seg.min_row_id}..{seg.max_row_id}")
        return seg


def parse_manifest(text: str, path: Path) -> Manifest:
    """Parse and validate manifest text; raises StoreCorrupt (or StoreError for a newer schema)."""
    r = _Reader(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise r.fail(f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise r.fail(f"'format' is not {FORMAT_NAME!r}")
    version = r.get(doc, "schema_version", int, "")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: store schema_version {version} is newer than this code supports "
                         f"({SCHEMA_VERSION}); upgrade facepipe to open it")
    counts = r.get(doc, "counts", dict, "")
    try:
        index = IndexConfig.from_dict(r.get(doc, "index", dict, ""))
    except (StoreError, TypeError) as exc:
        raise r.fail(f"field 'index' is invalid ({exc})") from exc
    segments = tuple(r.segment(s, i) for i, s in enumerate(r.get(doc, "segments", list, "")))
    threshold = r.get(doc, "threshold", (int, float), "", nullable=True)
    manifest = Manifest(
        schema_version=version,
        generation=r.get(doc, "generation", int, ""),
        model_version=r.get(doc, "model_version", str, ""),
        model_path=r.get(doc, "model_path", str, "", nullable=True),
        embedding_dim=r.get(doc, "embedding_dim", int, ""),
        threshold=None if threshold is None else float(threshold),
        index=index,
        created_at=r.get(doc, "created_at", str, ""),
        updated_at=r.get(doc, "updated_at", str, ""),
        next_row_id=r.get(doc, "next_row_id", int, ""),
        rows=r.get(counts, "rows", int, "counts."),
        identities=r.get(counts, "identities", int, "counts."),
        segments=segments,
        ann_recall=r.get(doc, "ann_recall", dict, "", nullable=True),
    )
    if sum(s.rows for s in segments) != manifest.rows:
        raise r.fail(f"counts.rows={manifest.rows} but the segments hold {sum(s.rows for s in segments)} rows")
    if segments and max(s.max_row_id for s in segments) >= manifest.next_row_id:
        raise r.fail(f"next_row_id={manifest.next_row_id} is not above every segment's row ids")
    if len({s.id for s in segments}) != len(segments):
        raise r.fail("a segment id is listed twice")
    return manifest


def read_manifest(store_dir: Path) -> Manifest:
    """Read `<store_dir>/manifest.json`; raises StoreError if the directory is not a store."""
    path = store_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(
            f"{store_dir} is not a gallery store (no {MANIFEST_NAME}); create one with "
            "GalleryStore.create(path, model_version=..., embedding_dim=...)"
        ) from None
    except UnicodeDecodeError as exc:
        raise StoreCorrupt(f"{path}: not UTF-8 text ({exc}); restore the store from a backup") from exc
    return parse_manifest(text, path)


def write_manifest(store_dir: Path, manifest: Manifest) -> None:
    """Atomically replace `<store_dir>/manifest.json` (this is the commit)."""
    write_file_atomic(store_dir / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
