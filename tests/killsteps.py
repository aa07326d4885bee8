"""Self-SIGKILL at the n-th file-changing system call: shared by the store and registry kill workers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from typing import Any


def kill_at(step: int, names: Sequence[str]) -> None:
    """Patch `os` so that this process SIGKILLs itself just before its step-th call of one of `names`
    (``open`` counts only with O_CREAT)."""
    seen = [0]

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if name != "open" or (len(args) > 1 and args[1] & os.O_CREAT):
                seen[0] += 1
                if seen[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call

    for name in names:
        setattr(os, name, wrap(name, getattr(os, name)))
