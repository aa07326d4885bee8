"""LFW ``pairs.txt`` parsing (the official View 2 format)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.core.errors import DataError

PAIR_COLUMNS = ["fold", "name1", "idx1", "name2", "idx2", "same", "path1", "path2"]


def lfw_image_path(name: str, idx: int) -> str:
    """Relative path of image ``idx`` of ``name`` in an LFW tree: ``name/name_0001.jpg``."""
    return f"{name}/{name}_{idx:04d}.jpg"


def parse_pairs(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse a pairs file: header ``<folds>\\t<n>``, then per fold n matched lines ``name i j``
    and n mismatched lines ``name1 i name2 j``.

    Returns:
        DataFrame with columns fold (1-based int), name1, idx1, name2, idx2, same (bool),
        path1, path2 (relative to the LFW root).
    Raises:
        DataError: naming the line that is malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"pairs file {p} does not exist")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"pairs file {p} is empty")
    head = lines[0].split()
    try:
        n_folds, n_per = (int(head[0]), int(head[1])) if len(head) == 2 else (1, int(head[0]))
    except (ValueError, IndexError) as exc:
        raise DataError(f"pairs file {p} line 1: expected '<folds>\\t<pairs per class>', got {lines[0]!r}") from exc
    expected = n_folds * 2 * n_per
    if len(lines) - 1 != expected:
        raise DataError(f"pairs file {p}: header says {n_folds} folds x 2 x {n_per} = {expected} lines, found {len(lines) - 1}")
    rows = []
    for i, line in enumerate(lines[1:]):
        fold = i // (2 * n_per) + 1
        same_block = (i % (2 * n_per)) < n_per
        parts = line.split()
        try:
            if same_block and len(parts) == 3:
                n1, a, b = parts[0], int(parts[1]), int(parts[2])
                rows.append((fold, n1, a, n1, b, True))
            elif not same_block and len(parts) == 4:
                rows.append((fold, parts[0], int(parts[1]), parts[2], int(parts[3]), False))
            else:
                kind = "matched 'name i j'" if same_block else "mismatched 'name1 i name2 j'"
                raise DataError(f"pairs file {p} line {i + 2}: expected a {kind} line, got {line!r}")
        except ValueError as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"pairs file {p} line {i + 2}: image numbers must be integers: {line!r}") from exc
    df = pd.DataFrame(rows, columns=PAIR_COLUMNS[:6])
    df["path1"] = [lfw_image_path(n, i) for n, i in zip(df["name1"], df["idx1"])]
    df["path2"] = [lfw_image_path(n, i) for n, i in zip(df["name2"], df["idx2"])]
    return df


def pair_people(pairs: pd.DataFrame) -> set[str]:
    """Every person named in ``pairs``."""
    return set(pairs["name1"]) | set(pairs["name2"])
