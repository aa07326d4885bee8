"""Longer fuzz run of the image loader and the manifest parser (the targets of tests/pipeline/test_fuzz.py).

Counts every input tried and every exception type that escaped other than the documented ones
(ImageError for images, DataError for manifests). Usage:
    .venv/bin/python scripts/fuzz.py --seconds 120 --seed 1
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from pipeline.core.errors import DataError, ImageError
from pipeline.data.images import decode_image
from pipeline.data.manifest import read_manifest


def seeds() -> list[bytes]:
    out = []
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"),
                      ("TIFF", "CMYK"), ("PNG", "I;16"), ("JPEG", "L"), ("PPM", "RGB")):
        buf = io.BytesIO()
        Image.new(mode, (17, 11), 3).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(0, 10)):
        op = rng.random()
        pos = rng.randrange(len(b)) if b else 0
        if op < 0.6 and b:
            b[pos] = rng.randrange(256)
        elif op < 0.8:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif b:
            del b[pos : pos + rng.randint(1, 16)]
    if rng.random() < 0.3:
        b = b[: rng.randint(0, len(b))]
    return bytes(b)


def fuzz_images(rng: random.Random, deadline: float, tmp: Path) -> tuple[int, Counter]:
    base, n, escaped = seeds(), 0, Counter()
    p = tmp / "x.img"
    while time.monotonic() < deadline:
        p.write_bytes(mutate(rng, rng.choice(base)) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 256)))
        n += 1
        try:
            decode_image(p)
        except ImageError:
            pass
        except Exception as exc:  # noqa: BLE001 - counted: any such escape is a bug
            escaped[f"{type(exc).__name__}: {exc}"[:120]] += 1
    return n, escaped


def fuzz_manifests(rng: random.Random, deadline: float, tmp: Path) -> tuple[int, Counter]:
    cols = ["image_path", "identity", "claimed_identity", "x", "", '"', "image_path "]
    cells = ["a.jpg", "", "..", "/etc/passwd", "Jos\u00e9", '"q,"', "\ufeff", "x\ny", "NaN", "1e9", ",,,", "\x00"]
    n, escaped = 0, Counter()
    for i in range(10**9):
        if time.monotonic() >= deadline:
            break
        suffix = ".parquet" if rng.random() < 0.1 else ".csv"
        p = tmp / f"m{i % 7}{suffix}"
        if suffix == ".csv":
            header = ",".join(rng.choice(cols) for _ in range(rng.randint(0, 4)))
            rows = [",".join(rng.choice(cells) for _ in range(rng.randint(0, 5))) for _ in range(rng.randint(0, 6))]
            text = "\n".join([header, *rows]).encode("utf-8")
            p.write_bytes(mutate(rng, text) if rng.random() < 0.3 else text)
        else:
            p.write_bytes(rng.randbytes(rng.randint(0, 64)))
        n += 1
        try:
            read_manifest(p)
        except DataError:
            pass
        except Exception as exc:  # noqa: BLE001
            escaped[f"{type(exc).__name__}: {exc}"[:120]] += 1
    return n, escaped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="per target")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as d:
        for name, fn in (("image loader", fuzz_images), ("manifest parser", fuzz_manifests)):
            n, escaped = fn(rng, time.monotonic() + a.seconds, Path(d))
            print(f"{name}: {n} inputs in {a.seconds:.0f} s, {sum(escaped.values())} undocumented exceptions")
            for msg, count in escaped.most_common(10):
                print(f"  {count} x {msg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
