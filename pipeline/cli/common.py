"""CLI plumbing: logging, progress bars, output files. Library code never prints; this module may."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline.core.io import write_parquet_atomic


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "matplotlib", "timm", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not verbose:  # the commands print their rejects themselves
        logging.getLogger("pipeline.data.image_batch").setLevel(logging.ERROR)


@contextmanager
def progress(total: int | None, desc: str, unit: str = "img", enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr (hidden when not a TTY or --quiet); yields ``update(n)``."""
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled or not sys.stderr.isatty(), leave=False,
               dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


def train_progress(enabled: bool) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """A step bar for training: (on_step callback, close)."""
    bar = tqdm(desc="train", unit="step", disable=not enabled or not sys.stderr.isatty(), leave=False, dynamic_ncols=True)

    def on_step(info: dict[str, Any]) -> None:
        if bar.total != info["total_steps"]:
            bar.total = info["total_steps"]
        bar.n = info["step"]
        if info.get("members", 1) > 1:
            bar.set_description(f"train member {info['member'] + 1}/{info['members']}", refresh=False)
        bar.set_postfix(loss=f"{info['loss']:.3f}", epoch=f"{info['epoch']:.1f}", refresh=False)
        bar.refresh()

    return on_step, bar.close


def teacher_progress(enabled: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A bar for the teacher's embeddings of the training faces (cached ones count as done at once):
    (progress(done, total) callback, close)."""
    bar = tqdm(desc="teacher", unit="img", disable=not enabled or not sys.stderr.isatty(), leave=False,
               dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def write_rejects(rejects: pd.DataFrame, path: Path, out: Callable[[str], None]) -> None:
    """Write the rejects table if it has rows, and say so."""
    if len(rejects):
        write_parquet_atomic(rejects[["image_path", "error"]].astype(str), path)
        out(f"{len(rejects)} rejected input(s) written to {path}")
        for row in rejects.head(5).itertuples():
            out(f"  rejected {row.image_path}: {row.error}")


def table(rows: list[tuple[str, str]]) -> str:
    """A two-column text table."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
