"""Typed errors raised by the gallery store.

Every message names the offending file, row or value and says what to do about it.
`StoreError` subclasses `ValueError` so callers that treat bad input generically still catch it;
`StoreWriteError` subclasses `OSError` (disk full, I/O errors), so I/O retry policies apply to it.
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


class StoreWriteError(OSError):
    """A write failed at the OS level (disk full, I/O error); the message says whether anything was committed.

    An OSError (not a StoreError): the cause is the environment, not the input, so retrying may succeed.
    """
