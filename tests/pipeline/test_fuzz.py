"""Fuzzing (hypothesis) of the image loader and the manifest parser: the only exceptions that may
escape are the documented ones (ImageError, DataError). `scripts/fuzz.py` runs the same targets longer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.core.errors import DataError, ImageError
from pipeline.data.images import decode_image
from pipeline.data.manifest import read_manifest


def _seed_images() -> list[bytes]:
    out = []
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "CMYK")):
        buf = io.BytesIO()
        Image.new(mode, (12, 9)).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(mutated_image(), st.binary(max_size=512)))
def test_image_loader_raises_only_image_error(tmp_path: Path, payload: bytes) -> None:
    p = tmp_path / "fuzz.img"
    p.write_bytes(payload)
    try:
        arr = decode_image(p)
    except ImageError:
        return
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype.name == "uint8"


csv_cell = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.sampled_from(["image_path", "identity", "claimed_identity", "x", ""]), max_size=4),
       rows=st.lists(st.lists(csv_cell, max_size=5), max_size=6), raw=st.binary(max_size=64), use_raw=st.booleans())
def test_manifest_parser_raises_only_data_error(tmp_path: Path, header: list[str], rows: list[list[str]],
                                                raw: bytes, use_raw: bool) -> None:
    p = tmp_path / "m.csv"
    if use_raw:
        p.write_bytes(raw)
    else:
        p.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]), encoding="utf-8")
    try:
        table = read_manifest(p)
    except DataError:
        return
    assert "image_path" in table.columns and "abs_path" in table.columns and len(table) > 0


def test_duplicate_columns_are_a_data_error(tmp_path: Path) -> None:  # found by scripts/fuzz.py
    (tmp_path / "m.csv").write_text("image_path,image_path \na.jpg,b.jpg\n")
    with pytest.raises(DataError, match="duplicate column"):
        read_manifest(tmp_path / "m.csv")


def test_malformed_tiff_is_an_image_error(tmp_path: Path) -> None:  # found by hypothesis: PIL raised TypeError
    buf = io.BytesIO()
    Image.new("CMYK", (12, 9)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    data[72] = 2  # one byte of the tag directory: PIL's TIFF plugin then fails with a TypeError
    p = tmp_path / "bad.tif"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="TypeError"):
        decode_image(p)


@pytest.mark.parametrize("payload", [b"", b"\x00" * 10, b"PAR1", b"PAR1\x00\x00PAR1"])
def test_bad_parquet_manifest_is_a_data_error(tmp_path: Path, payload: bytes) -> None:
    p = tmp_path / "m.parquet"
    p.write_bytes(payload)
    with pytest.raises(DataError):
        read_manifest(p)
