"""Image tables from identity folders or CSV/Parquet manifests.

An *image table* is a pandas DataFrame with at least:
  ``image_path`` (str, as the user gave it: relative to ROOT for folders, as written in a manifest),
  ``abs_path`` (str, resolved absolute path), ``identity`` (str or None),
plus any other columns of the manifest (e.g. ``claimed_identity``), unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.data import schemas
from pipeline.data.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

REJECT_COLUMNS = ["image_path", "error"]


def empty_rejects() -> pd.DataFrame:
    """A rejects table with no rows (`pipeline.data.schemas.REJECTS`: ``image_path``, ``error``)."""
    return schemas.empty(schemas.REJECTS)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _utf8_or_none(text: str) -> str | None:
    """``text`` if it is valid UTF-8 (no surrogate escapes from undecodable bytes), else None."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return None


def _escaped(text: str) -> str:
    """A printable, valid-UTF-8 form of a file name with undecodable bytes (``\\xe9``)."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def scan_folder(root: str | os.PathLike[str], *, require_identities: bool = True) -> pd.DataFrame:
    """List the images of ``ROOT/<identity>/<image>`` (and, if allowed, ``ROOT/<image>`` with no identity).

    Entries named like images are listed even if they are directories or broken links, so that
    decoding reports them as rejects instead of silently dropping them.

    Raises:
        DataError: ``root`` is missing, not a directory, or holds no images.
    """
    r = Path(root)
    if not r.exists():
        raise DataError(f"data folder {r} does not exist")
    if not r.is_dir():
        raise DataError(f"{r} is not a folder (expected ROOT/<identity>/<image> or a .csv/.parquet manifest)")
    rows: list[tuple[str, str | None, str | None, str | None]] = []

    def add(rel: str, path: str, identity: str | None) -> None:
        if _utf8_or_none(rel) is None:  # names with undecodable bytes become rejects, shown escaped
            rows.append((_escaped(rel), None, None if identity is None else _escaped(identity),
                         "file or folder name is not valid UTF-8; rename it"))
        else:
            rows.append((rel, os.path.abspath(path), identity, None))

    for entry in sorted(os.scandir(r), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=True) and not _is_image_name(entry.name):
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if _is_image_name(sub.name):
                    add(f"{entry.name}/{sub.name}", sub.path, entry.name)
        elif _is_image_name(entry.name):
            add(entry.name, entry.path, None)
    if not rows:
        raise DataError(
            f"no images found under {r} (expected ROOT/<identity>/<image> with suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    table = pd.DataFrame(rows, columns=["image_path", "abs_path", "identity", "error"])
    if table["error"].isna().all():
        table = table.drop(columns=["error"])
    if require_identities and table["identity"].isna().any():
        loose = table.loc[table["identity"].isna(), "image_path"].head(3).tolist()
        raise DataError(f"{r}: images must sit in one folder per identity (ROOT/<identity>/<image>); loose files: {loose}")
    return table


def read_manifest(path: str | os.PathLike[str], *, required: tuple[str, ...] = ("image_path",)) -> pd.DataFrame:
    """Read a CSV (UTF-8, BOM allowed) or Parquet manifest into an image table.

    Relative ``image_path`` values are resolved against the manifest's folder. Exact duplicate rows
    are dropped (logged). Extra columns are kept.

    Raises:
        DataError: unreadable/empty file, missing columns, or non-text ``image_path`` values.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest {p} does not exist or is not a file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pq.read_table(p).to_pandas()
        elif suffix in (".csv", ".txt"):
            df = pd.read_csv(p, encoding="utf-8-sig", encoding_errors="surrogateescape", dtype=object,
                             keep_default_na=False, na_values=[""])
        else:
            raise DataError(f"manifest {p}: unsupported suffix {suffix!r}; use .csv or .parquet")
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"manifest {p} is empty (expected a header with columns {list(required)})") from exc
    except (pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"manifest {p} cannot be read: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise DataError(f"manifest {p}: duplicate column name(s) {dupes}; each column must appear once")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"manifest {p}: missing column(s) {missing}; found {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"manifest {p} has a header but no rows")
    for col in ("image_path", "identity", "claimed_identity"):
        if col in df.columns:
            bad = df[col].map(lambda v: v is not None and not isinstance(v, str) and not pd.isna(v))
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise DataError(f"manifest {p} row {row}: column {col!r} must be text, got {df[col].iloc[row]!r}")
    df = _mark_invalid_utf8(df)
    before = len(df)
    df = df.drop_duplicates().reset_index(drop=True)
    if len(df) < before:
        log.warning("manifest %s: dropped %d exact duplicate row(s)", p, before - len(df))
    base = p.parent.resolve()
    df["image_path"] = df["image_path"].astype(object)
    bad = df["error"].notna() if "error" in df.columns else pd.Series(False, index=df.index)
    df["abs_path"] = [
        None if skip else (str(base / v) if not os.path.isabs(v) else v) if isinstance(v, str) and v else None
        for v, skip in zip(df["image_path"], bad)
    ]
    if "identity" not in df.columns:
        df["identity"] = None
    return df


def _mark_invalid_utf8(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose text is not valid UTF-8 get an ``error`` (and an escaped, printable value) instead of crashing."""
    errors: list[str | None] = [None] * len(df)
    for col in df.columns:
        if df[col].dtype != object:
            continue
        values = df[col].tolist()
        for i, v in enumerate(values):
            if isinstance(v, str) and _utf8_or_none(v) is None:
                values[i] = _escaped(v)
                errors[i] = errors[i] or f"column {col!r} is not valid UTF-8 (shown escaped); fix the manifest's encoding"
        df[col] = pd.Series(values, index=df.index, dtype=object)
    if any(errors):
        df["error"] = errors
    return df


def read_images(source: str | os.PathLike[str], *, require_identities: bool = False,
                required: tuple[str, ...] = ("image_path",)) -> pd.DataFrame:
    """An image table from a folder (identity folders) or a manifest file."""
    s = Path(source)
    if s.is_dir():
        return scan_folder(s, require_identities=require_identities)
    if not s.exists():
        raise DataError(f"{s} does not exist (expected an image folder or a .csv/.parquet manifest)")
    table = read_manifest(s, required=required)
    if require_identities:
        missing = table["identity"].isna() | (table["identity"].astype(str).str.strip() == "")
        if missing.any():
            row = int(missing.to_numpy().nonzero()[0][0])
            raise DataError(f"manifest {s} row {row}: empty identity (every row needs one here)")
    return table
