"""Fetch-and-extract of LFW against an archive built here and served on 127.0.0.1 (no internet)."""

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.core.errors import DataError
from pipeline.data.lfw import fetch_lfw, resolve_data_dir


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def _archive(root: Path, evil: bool = False) -> str:
    path = root / "lfw-deepfunneled.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for person in ("Ann_A", "Bob_B"):
            for i in (1, 2):
                buf = io.BytesIO()
                Image.new("RGB", (250, 250), (i * 40, 90, 160)).save(buf, format="JPEG")
                info = tarfile.TarInfo(f"lfw-deepfunneled/{person}/{person}_{i:04d}.jpg")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
        if evil:
            info = tarfile.TarInfo("../../escape.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    (root / "pairs.txt").write_text("1\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\n")
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_fetch_verifies_extracts_and_caches(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    md5 = _archive(root)
    pairs_md5 = hashlib.md5((root / "pairs.txt").read_bytes()).hexdigest()
    dest = tmp_path / "data"
    fetch_lfw(dest, url=f"{url}/lfw-deepfunneled.tgz", md5=md5, pairs_url=f"{url}/pairs.txt", pairs_md5=pairs_md5,
              cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (dest / "lfw").iterdir()) == ["Ann_A", "Bob_B"]
    assert (dest / "lfw" / "Ann_A" / "Ann_A_0002.jpg").is_file() and (dest / "pairs.txt").is_file()
    assert (tmp_path / "cache" / "lfw-deepfunneled.tgz").is_file()
    (root / "lfw-deepfunneled.tgz").unlink()  # a second fetch needs no network
    fetch_lfw(dest, url=f"{url}/lfw-deepfunneled.tgz", md5=md5, pairs_url=None, cache_dir=tmp_path / "cache")
    assert resolve_data_dir(dest) == dest


def test_checksum_mismatch_is_refused(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    _archive(root)
    with pytest.raises(DataError, match="does not match the published"):
        fetch_lfw(tmp_path / "d", url=f"{url}/lfw-deepfunneled.tgz", md5="0" * 32, pairs_url=None,
                  cache_dir=tmp_path / "cache")
    assert not (tmp_path / "d" / "lfw").exists()
    assert not list((tmp_path / "cache").glob("*.tgz"))  # nothing half-downloaded is kept


def test_path_traversal_member_is_refused(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    md5 = _archive(root, evil=True)
    with pytest.raises(DataError, match="cannot extract safely"):
        fetch_lfw(tmp_path / "d", url=f"{url}/lfw-deepfunneled.tgz", md5=md5, pairs_url=None,
                  cache_dir=tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists()


def test_cli_fetch_and_missing_setting(served: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = served
    md5 = _archive(root)
    rc = main(["fetch-lfw", "--dest", str(tmp_path / "d"), "--url", f"{url}/lfw-deepfunneled.tgz", "--md5", md5,
               "--pairs-url", f"{url}/pairs.txt", "--no-verify", "-q"])
    assert rc == 0 and "2 people" in capsys.readouterr().out
    monkeypatch.delenv("FACEPIPE_DATA", raising=False)
    assert main(["demo", "-q"]) == 2
    assert "pass --data DIR or set FACEPIPE_DATA" in capsys.readouterr().err


def test_missing_data_folder_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACEPIPE_DATA", raising=False)
    with pytest.raises(DataError, match="no data folder: pass --data DIR or set FACEPIPE_DATA"):
        resolve_data_dir(None)
    with pytest.raises(DataError) as err:
        resolve_data_dir("../shared/data")
    msg = str(err.value)
    assert "\n" not in msg and f"../shared/data does not exist (from {tmp_path})" in msg
    assert "pass --data DIR or set FACEPIPE_DATA=DIR" in msg
    with pytest.raises(DataError) as err:
        resolve_data_dir(tmp_path / "nope")
    assert "(from" not in str(err.value)  # an absolute path needs no working folder
    monkeypatch.setenv("FACEPIPE_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
