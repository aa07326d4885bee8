"""Typed errors raised by the gallery store.

Every message names the offending file, row or value and says what to do about it.
`StoreError` subclasses `ValueError` so callers that treat bad input generically still catch it.
"""

from __future__ import annotations


class StoreError(ValueError):
    """Base class: invalid input or an operation the store cannot perform."""


class ModelVersionMismatch(StoreError):
    """Embeddings from one model were offered to a store built with another model."""


class StoreCorrupt(StoreError):
    """A store file is missing, truncated, or disagrees with `manifest.json`."""


class StoreLocked(StoreError):
    """The writer lock could not be taken within the timeout (another process is writing)."""
