"""Getting LFW onto a machine: a local copy named by one setting, or the official archive.

The data folder holds ``lfw/<Person>/<Person>_NNNN.jpg`` and a pairs file. It is named by the
``--data`` option or, failing that, the ``FACEPIPE_DATA`` environment variable; library code never
guesses a path. :func:`fetch_lfw` downloads the official deep-funneled archive once, checks its
published MD5, and extracts it safely (no member may land outside the destination).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

DATA_ENV = "FACEPIPE_DATA"
LFW_DEEPFUNNELED_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
LFW_DEEPFUNNELED_MD5 = "68331da3eb755a505a502b5aacb3c201"  # as published with the archive
LFW_PAIRS_URL = "http://vis-www.cs.umass.edu/lfw/pairs.txt"
LFW_PAIRS_MD5 = "9f1ba174e4e1c508ff7cdf10ac338a7d"
PAIRS_NAMES = ("lfw_pairs_dev.txt", "pairs.txt")


def resolve_data_dir(option: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``option`` if given, else ``$FACEPIPE_DATA``.

    Raises:
        DataError: neither is set, or the folder has no ``lfw/`` inside.
    """
    raw = option if option is not None else os.environ.get(DATA_ENV)
    if not raw:
        raise DataError(f"no data folder: pass --data DIR or set {DATA_ENV}=DIR (a folder holding lfw/ and a "
                        f"pairs file; `facepipe fetch-lfw --dest DIR` downloads one)")
    d = Path(raw).expanduser()
    if not d.is_dir():
        where = "" if d.is_absolute() else f" (from {Path.cwd()})"
        raise DataError(f"data folder {d} does not exist{where}: pass --data DIR or set {DATA_ENV}=DIR to the folder "
                        f"holding lfw/ and a pairs file")
    return d


def lfw_layout(data_dir: Path) -> tuple[Path, Path | None]:
    """(identity-folder root, pairs file or None) inside a data folder; accepts the lfw root itself too."""
    root = data_dir / "lfw" if (data_dir / "lfw").is_dir() else data_dir
    pairs = next((data_dir / n for n in PAIRS_NAMES if (data_dir / n).is_file()), None)
    return root, pairs


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None, *, timeout_s: float = 60.0,
             progress: Callable[[int], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` (cached: an existing file with the right MD5 is kept)."""
    if dest.is_file() and (md5 is None or md5_file(dest) == md5):
        log.info("using cached %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        got = md5_file(Path(tmp))
        if md5 is not None and got != md5:
            raise DataError(f"{url}: MD5 {got} does not match the published {md5}; the download is corrupt")
        os.replace(tmp, dest)
    except OSError as exc:
        raise DataError(f"cannot download {url}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive refusing absolute paths, ``..``, links and devices (tarfile 'data' filter)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract safely: {exc}") from exc


def fetch_lfw(dest: str | os.PathLike[str], *, url: str = LFW_DEEPFUNNELED_URL, md5: str | None = LFW_DEEPFUNNELED_MD5,
              pairs_url: str | None = LFW_PAIRS_URL, pairs_md5: str | None = LFW_PAIRS_MD5,
              cache_dir: str | os.PathLike[str] | None = None,
              progress: Callable[[int], None] | None = None) -> Path:
    """Make ``dest/lfw/<Person>/...`` and ``dest/pairs.txt`` from the official files (idempotent).

    Returns:
        ``dest``, ready to use as the data folder.
    """
    d = Path(dest)
    if (d / "lfw").is_dir() and any((d / "lfw").iterdir()):
        log.info("%s already holds lfw/", d)
    else:
        cache = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facepipe"
        archive = download(url, cache / Path(url).name, md5, progress=progress)
        staging = Path(tempfile.mkdtemp(dir=d.parent if d.parent.exists() else None, prefix=".lfw-extract-"))
        try:
            safe_extract(archive, staging)
            tops = [p for p in staging.iterdir() if p.is_dir()]
            if len(tops) != 1:
                raise DataError(f"{archive}: expected one top folder, found {[p.name for p in tops]}")
            d.mkdir(parents=True, exist_ok=True)
            os.replace(tops[0], d / "lfw")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if pairs_url and not any((d / n).is_file() for n in PAIRS_NAMES):
        download(pairs_url, d / "pairs.txt", pairs_md5)
    return d
