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
from typing import Any

from pipeline.core.errors import ConfigError

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


DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> Any:
    """The torch device for ``name``: ``auto`` picks CUDA, then Apple MPS, then the CPU; ``cuda``, ``cuda:N`` and
    ``mps`` must be present (the error says which accelerators this machine has)."""
    import torch

    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise ConfigError(f"device {name!r} is not one of {list(DEVICES)} (or cuda:N)")
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if base == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (base == "cuda" and not cuda) or (base == "mps" and not mps):
        have = [d for d, ok in (("cuda", cuda), ("mps", mps)) if ok] or ["cpu only"]
        raise ConfigError(f"device {name!r} is not available on this machine (available: {', '.join(have)}); "
                          "use --device auto or cpu")
    return torch.device(name)


def autocast_dtype(device: Any, amp: str) -> Any:
    """The autocast dtype for ``amp`` (``auto``: bf16 on CUDA when supported, else fp16 on CUDA/MPS; off on the
    CPU, where it is slower here) or None for full fp32. ``amp``: auto | bf16 | fp16 | off."""
    import torch

    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"amp={amp!r} is not one of ['auto', 'bf16', 'fp16', 'off']")
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    if amp == "bf16" or (amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


apply_defaults()
