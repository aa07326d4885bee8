"""Gallery store: enrolled face embeddings with exact (or optional approximate) cosine search.

Imports only the standard library, numpy, pandas, pyarrow and faiss (never torch or prefect).

    from indexes import GalleryStore, IndexConfig
    store = GalleryStore.create("gallery/", model_version=mv, embedding_dim=512, threshold=0.42)
    store.enroll(embeddings, identities, image_paths, image_sha256, model_version=mv)
    store.identify(queries, model_version=mv, top_k=5)
"""

from indexes.aggregate import AGGREGATIONS
from indexes.config import INDEX_KINDS, IndexConfig
from indexes.errors import (
    ModelVersionMismatch,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    StoreWriteError,
)
from indexes.manifest import SCHEMA_VERSION
from indexes.segments import METADATA_SCHEMA
from indexes.store import GalleryStore
from indexes.validation import UNKNOWN
from indexes.writer import EnrollResult

__all__ = [
    "AGGREGATIONS",
    "INDEX_KINDS",
    "METADATA_SCHEMA",
    "SCHEMA_VERSION",
    "UNKNOWN",
    "EnrollResult",
    "GalleryStore",
    "IndexConfig",
    "ModelVersionMismatch",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "StoreWriteError",
]
