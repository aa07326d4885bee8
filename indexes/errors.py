"""Typed errors raised by the gallery store.

Every message names the offending file, row or value and says what to do about it.
`StoreError` subclasses `ValueError` so callers that treat bad input generically still catch it;
`StoreWriteError` subclasses `OSError` (disk full, I/O errors), so I/O retry policies apply to it.

`FacepipeError` is the root of the project's ONE error tree (`pipeline.core.errors` re-exports it and adds
the pipeline's kinds). It is defined here because `indexes` is the bottom layer and imports nothing above it;
every error a user can act on derives from it, and the CLI maps the tree to exit codes by type.
"""

from __future__ import annotations


class FacepipeError(Exception):
    """Base class for errors a user can act on (the CLI prints them on one line and exits 2)."""


class StoreError(FacepipeError, ValueError):
    """Base class: invalid input or an operation the store cannot perform."""


class ModelVersionMismatch(StoreError):
    """Embeddings from one model were offered to a store built with another model."""


class StoreCorrupt(StoreError):
    """A store file is missing, truncated, or disagrees with `manifest.json`."""


class StoreLocked(StoreError):
    """The writer lock could not be taken within the timeout (another process is writing)."""


class StoreWriteError(FacepipeError, OSError):
    """A write failed at the OS level (disk full, I/O error); the message says whether anything was committed.

    An OSError (not a StoreError): the cause is the environment, not the input, so retrying may succeed.
    """
