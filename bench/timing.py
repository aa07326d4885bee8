"""Interleaved timing for the benchmarks that compare embedders in one invocation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds per row; one warm-up each, then the rows interleaved run by run (a slow spell of a shared
    machine hits every row, not one)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
