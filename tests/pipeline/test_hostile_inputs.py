"""Hostile and messy inputs: each bad one becomes a reject with a reason; the good ones go through."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import ImageError
from pipeline.data.image_batch import decode_table
from pipeline.data.images import decode_image
from pipeline.data.manifest import read_images, read_manifest


def _png_with_bad_crc(path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    crc_at = idat + 4 + length
    data[crc_at : crc_at + 4] = struct.pack(">I", (zlib.crc32(bytes(data[idat : crc_at])) + 1) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_png_with_bad_crc_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "crc.png"
    _png_with_bad_crc(p)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(p)


def test_animated_gif_uses_first_frame_and_tiny_images_work(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    arr = decode_image(tmp_path / "a.gif")
    assert arr.shape == (16, 16, 3) and arr[..., 0].mean() > 200 and arr[..., 1].mean() < 50
    Image.new("RGB", (1, 1), (5, 6, 7)).save(tmp_path / "one.png")
    assert decode_image(tmp_path / "one.png").shape == (1, 1, 3)


def test_symlink_loop_is_rejected(tmp_path: Path) -> None:
    os.symlink(tmp_path / "b.jpg", tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "b.jpg")
    with pytest.raises(ImageError, match="cannot read file"):
        decode_image(tmp_path / "a.jpg")


def test_unreadable_file_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(p)
    p.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it would for a normal user
        def deny(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", str(p))

        monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(ImageError, match="permission denied"):
        decode_image(p)


def test_non_utf8_file_names_are_rejects_not_crashes(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path / "root")
    os.makedirs(os.path.join(root, b"Jos\xe9"))
    Image.new("RGB", (20, 20)).save(open(os.path.join(root, b"Jos\xe9", b"img\xff.jpg"), "wb"), format="JPEG")
    os.makedirs(os.path.join(root, b"Ann"))
    Image.new("RGB", (20, 20)).save(os.path.join(os.fsdecode(root), "Ann", "a.jpg"))
    table = read_images(os.fsdecode(root), require_identities=True)
    faces = decode_table(table, 1.0, 8)
    assert len(faces.keep) == 1
    assert faces.rejects["image_path"].tolist() == ["Jos\\xe9/img\\xff.jpg"]
    assert "not valid UTF-8" in faces.rejects["error"].iloc[0]


def test_latin1_manifest_rows_are_rejected_the_rest_kept(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "ok.jpg")
    (tmp_path / "m.csv").write_bytes(b"image_path,identity\nok.jpg,Ann\nJos\xe9.jpg,Jos\xe9\n")
    table = read_manifest(tmp_path / "m.csv")
    faces = decode_table(table, 1.0, 8)
    assert len(faces.keep) == 1 and "not valid UTF-8" in faces.rejects["error"].iloc[0]


def test_identities_with_separators_are_only_data(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "x.jpg")
    (tmp_path / "m.csv").write_text("image_path,identity\nx.jpg,../../etc/passwd\nx.jpg,a/b\n")
    table = read_images(tmp_path / "m.csv", require_identities=True)
    assert table["identity"].tolist() == ["../../etc/passwd", "a/b"]
    assert np.all([p == str(tmp_path / "x.jpg") for p in table["abs_path"]])
