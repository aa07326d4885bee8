"""Decode any supported image file into an RGB uint8 array, with guards against hostile files.

Handles grey, RGB, RGBA, palette, 16-bit, CMYK, EXIF-rotated and animated (first frame) images.
Every failure raises :class:`ImageError` naming the file and the reason.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.core.errors import ImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 40_000_000  # decompression-bomb guard: a 20000x20000 image is refused before decoding
MAX_FILE_BYTES = 64 * 1024 * 1024

# Truncated files must fail, not decode as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (alpha composited on black, 16-bit scaled to 8-bit)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def decode_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``path`` as an RGB image.

    Returns:
        uint8 array of shape (H, W, 3), EXIF orientation applied.
    Raises:
        ImageError: missing, unreadable, not an image, truncated, too large, or empty.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageError(p, "is a directory, not an image file")
        size = p.stat().st_size
    except OSError as exc:  # missing, permission denied, symlink loop
        raise ImageError(p, f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageError(p, f"file is {size} bytes, larger than the {MAX_FILE_BYTES}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on damaged metadata: the result decides
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(p, f"{w}x{h} px exceeds the {MAX_PIXELS:,}-pixel limit (decompression-bomb guard)"
                    )
                if w < 1 or h < 1:
                    raise ImageError(p, f"image has no pixels ({w}x{h})")
                if img.format == "PNG":  # PIL does not check PNG chunk CRCs while decoding
                    with Image.open(p) as check:
                        check.verify()
                img.seek(0)  # animated formats: first frame
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
                arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(p, "not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(p, f"too many pixels (decompression-bomb guard): {exc}") from exc
    except PermissionError as exc:
        raise ImageError(p, "permission denied") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as exc:
        raise ImageError(p, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # noqa: BLE001 - PIL plugins raise arbitrary types on malformed data (found by fuzzing)
        raise ImageError(p, f"malformed image data ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(p, f"decoded to unexpected shape {arr.shape}")
    return arr


def center_crop_resize(rgb: np.ndarray, crop_fraction: float, size_px: int) -> np.ndarray:
    """Central square crop of ``crop_fraction`` of the shorter side, resized to ``size_px``.

    Args:
        rgb: uint8 (H, W, 3).
    Returns:
        uint8 (size_px, size_px, 3).
    """
    h, w = rgb.shape[:2]
    side = max(1, int(round(min(h, w) * crop_fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(rgb[top : top + side, left : left + side])
    return np.asarray(crop.resize((size_px, size_px), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


def load_face(path: str | os.PathLike[str], crop_fraction: float, size_px: int) -> np.ndarray:
    """Decode, crop and resize one face image to uint8 (size_px, size_px, 3)."""
    return center_crop_resize(decode_image(path), crop_fraction, size_px)

