"""Process-wide runtime tuning, applied once, before torch, OpenMP or OpenCV load.

Every entry point (the CLI, the flows and their deployments, the bench scripts, the tests) imports the
`pipeline` package first, and ``pipeline/__init__.py`` imports this module, so the defaults below are in
the environment before any native library reads them. A value the user exported wins (``setdefault``).

- ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. On a 2-core machine spinning
  threads of one pool starve the other (measured up to 16x slower training with the default policy).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_defaults() -> None:
    """Put the tuning defaults into ``os.environ`` unless the user set them already."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def set_threads(threads: int) -> None:
    """Intra-op threads of torch (and OpenCV, if loaded) for this process; ``0`` keeps the libraries' default
    (one per core)."""
    if threads < 0:
        raise ValueError(f"threads={threads} must be >= 0")
    if threads == 0:
        return
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


apply_defaults()
