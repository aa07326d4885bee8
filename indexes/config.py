"""`IndexConfig`: how a gallery store indexes and lays out its embeddings.

The config is stored in `manifest.json` when the store is created, so every process that opens the
store searches it the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from indexes.errors import StoreError

IndexKind = Literal["flat", "hnsw", "ivf"]
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexConfig:
    """Search and layout settings of a gallery store.

    kind: "flat" = exact cosine search (default). "hnsw" / "ivf" = approximate search through a
        faiss index built per sealed segment (see `indexes.ann`); meant for galleries past ~1M rows.
    hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths (build / search).
    ivf_nlist: IVF cells per segment; None -> 4 * sqrt(rows of the segment).
    nprobe: IVF cells visited per query.
    max_segments: small segments (fewer than segment_rows / 2 rows) allowed before an enrol or delete
        triggers an automatic tiered compaction of the smallest ones.
    segment_rows: rows in a sealed segment. A delete rewrites only the segments holding the
        identity, so this bounds a delete's cost (65536 x 512 float32 = 128 MiB). Exact search
        cost does not depend on it; for "hnsw"/"ivf" each sealed segment gets its own ANN index,
        so larger segments (e.g. 2**20) make approximate search cheaper and deletes dearer.
    ann_min_rows: segments with fewer rows are always searched exactly, even for approximate kinds.
    recall_k, recall_queries: how `compact()` measures an approximate index's recall@k against exact
        search on the store's own vectors (the value is reported by `info()`).
    """

    kind: IndexKind = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    ivf_nlist: int | None = None
    nprobe: int = 16
    max_segments: int = 8
    segment_rows: int = 65536
    ann_min_rows: int = 20000
    recall_k: int = 10
    recall_queries: int = 500

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise StoreError(f"IndexConfig.kind={self.kind!r} is not valid; choose one of {INDEX_KINDS}")
        positive = ("hnsw_m", "ef_construction", "ef_search", "nprobe", "max_segments", "segment_rows",
                    "recall_k", "recall_queries")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StoreError(f"IndexConfig.{name}={value!r} must be a positive integer")
        if self.segment_rows < 2:
            raise StoreError(f"IndexConfig.segment_rows={self.segment_rows!r} must be at least 2")
        if isinstance(self.ann_min_rows, bool) or not isinstance(self.ann_min_rows, int) or self.ann_min_rows < 1:
            raise StoreError(f"IndexConfig.ann_min_rows={self.ann_min_rows!r} must be a positive integer")
        if self.ivf_nlist is not None and (
            isinstance(self.ivf_nlist, bool) or not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 1
        ):
            raise StoreError(f"IndexConfig.ivf_nlist={self.ivf_nlist!r} must be None or a positive integer")

    @property
    def approximate(self) -> bool:
        """True for the ANN kinds ("hnsw", "ivf")."""
        return self.kind != "flat"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the form stored in `manifest.json`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        """Inverse of `to_dict`; unknown keys are rejected so a typo is not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StoreError(f"unknown IndexConfig keys {unknown}; valid keys are {sorted(known)}")
        return cls(**data)
