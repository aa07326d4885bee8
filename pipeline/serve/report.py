"""The review page of an identification run: a static HTML file with aligned face thumbnails beside it.

Each probe's face (aligned the model's way) sits beside its top-k gallery candidates (the first enrolled
photo of each identity, aligned the same way), with score, threshold and decision. Rejected probes come
first (no face, unreadable: shown as the photo itself, with the reason), then the unknowns, then the
matches; inside a group, probes with quality flags first, then the least sure (lowest top-1 score). A reviewer
scrolls from what needs a human down to what probably does not.

`write_review_page` takes plain tables (the `identify` results and rejects, the store's metadata), so the CLI
(`facepipe identify --report DIR`) and the lookup flow's artifact call the same function.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.errors import ImageError
from pipeline.core.io import write_bytes_atomic
from pipeline.data.images import center_crop_resize, decode_image
from pipeline.faces.loader import FacePreprocessing, preprocessing_from_meta
from pipeline.faces.policy import Mode
from pipeline.model.artifacts import LoadedModel

log = logging.getLogger(__name__)

PAGE = "index.html"
THUMBS = "faces"

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa;overflow-wrap:anywhere}
h2{margin-top:1.6em;border-bottom:1px solid #ccc}
.probe{display:flex;gap:1em;align-items:flex-start;padding:.6em;margin:.4em 0;background:#fff;border:1px solid #ddd;
border-left:6px solid #999;border-radius:4px}
.probe.reject{border-left-color:#c0392b}.probe.unknown{border-left-color:#e67e22}.probe.match{border-left-color:#27ae60}
figure{margin:0;text-align:center;font-size:12px;width:124px}
figure img{width:112px;height:112px;object-fit:contain;background:#eee;border:1px solid #ccc}
figure.hit img{border:3px solid #27ae60}.cands{display:flex;gap:.5em;flex-wrap:wrap}
.meta{font-size:13px;max-width:22em;word-break:break-all}.flag{color:#c0392b;font-weight:bold}
.none{width:112px;height:112px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
"""


class _Thumbs:
    """Writes each face thumbnail once (JPEG under ``out/faces``) and returns its path relative to the page."""

    def __init__(self, out_dir: Path, prep: FacePreprocessing | None, px: int) -> None:
        self.dir = out_dir / THUMBS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prep = prep
        self.px = px
        self.done: dict[tuple[str, bool, bool], str | None] = {}

    def face(self, path: Any, *, aligned: bool = False) -> str | None:
        """The subject's face as the model sees it (aligned, or the central crop); the photo when no face."""
        return self._get(path, aligned, photo=False)

    def photo(self, path: Any) -> str | None:
        """The whole photo, fitted in the thumbnail box (for rejects)."""
        return self._get(path, False, photo=True)

    def _get(self, path: Any, aligned: bool, photo: bool) -> str | None:
        if not isinstance(path, str) or not path:
            return None
        key = (path, aligned, photo)
        if key not in self.done:
            try:
                img = self._make(path, aligned, photo)
            except (ImageError, OSError) as exc:
                log.info("no thumbnail for %s: %s", path, exc)
                img = None
            self.done[key] = None if img is None else self._write(img)
        return self.done[key]

    def _make(self, path: str, aligned: bool, photo: bool) -> np.ndarray | None:
        prep = self.prep
        if not photo and prep is not None and prep.aligner is not None:
            out = prep.aligner.align_path(path, mode=Mode.QUERY, already_aligned=aligned)
            if out.crop is not None:
                return out.crop
            if out.reject_code == "unreadable":
                return None
        rgb = decode_image(path)
        if photo or prep is None or prep.aligner is not None:  # whole photo, fitted
            im = Image.fromarray(rgb)
            im.thumbnail((2 * self.px, 2 * self.px))
            return np.asarray(im)
        return center_crop_resize(rgb, prep.crop_fraction, self.px)

    def _write(self, img: np.ndarray) -> str:
        name = f"f{len(self.done):05d}.jpg"
        im = Image.fromarray(np.ascontiguousarray(img))
        if max(im.size) > 2 * self.px:
            im.thumbnail((2 * self.px, 2 * self.px))
        from io import BytesIO

        buf = BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=90)
        write_bytes_atomic(self.dir / name, buf.getvalue())
        return f"{THUMBS}/{name}"


def _img(src: str | None, alt: str) -> str:
    if src is None:
        return '<div class="none">no image</div>'
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}" loading="lazy">'


def _flags(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value) else str(value)


def _fmt(v: Any, spec: str) -> str:
    try:
        return "-" if v is None or pd.isna(v) else format(float(v), spec)
    except (TypeError, ValueError):
        return "-"


def write_review_page(results: pd.DataFrame, rejects: pd.DataFrame, gallery_table: pd.DataFrame,
                      out_dir: str | os.PathLike[str], *, model: LoadedModel | None = None,
                      prep: FacePreprocessing | None = None, probes: pd.DataFrame | None = None,
                      threshold: float | None = None, aligned: bool = False, title: str = "facepipe identify: review",
                      thumb_px: int = 112, progress: Callable[[int], None] | None = None) -> Path:
    """Write ``out_dir/index.html`` and its face thumbnails (``out_dir/faces/*.jpg``); returns the page's path.

    Args:
        results: `identify` results (`pipeline.data.schemas.IDENTIFY`: image_path, rank, identity, score,
            decision, ... and the face columns).
        rejects: probes that gave no answer (image_path, error).
        gallery_table: the store's metadata (identity, image_path absolute, row_id); each candidate is shown
            with the first enrolled photo of its identity.
        model: faces are made its way (`model.meta["preprocessing"]`); or give ``prep`` directly. Neither:
            thumbnails are the photos, fitted.
        probes: the probe table (image_path as in the results, abs_path to read it); default: image_path is
            readable as it is.
        threshold: the decision threshold (shown; decisions are the results' own).
        aligned: the probes are aligned crops already (``--aligned``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if prep is None and model is not None:
        prep = preprocessing_from_meta(model.meta["preprocessing"], mode=Mode.QUERY)
    thumbs = _Thumbs(out, prep, thumb_px)
    where: dict[str, str] = {}
    if probes is not None and "abs_path" in probes.columns:
        where = {str(p): a for p, a in zip(probes["image_path"], probes["abs_path"], strict=True) if isinstance(a, str)}
    first_photo: dict[str, str] = {}
    g = gallery_table.sort_values("row_id") if "row_id" in gallery_table.columns else gallery_table
    for ident, path in zip(g["identity"].astype(str), g["image_path"].astype(str), strict=True):
        first_photo.setdefault(ident, path)

    cards: list[tuple[tuple[Any, ...], str]] = []
    for row in rejects.itertuples(index=False):
        path = str(row.image_path)
        body = (f'<figure>{_img(thumbs.photo(where.get(path, path)), "photo")}<figcaption>photo</figcaption></figure>'
                f'<div class="meta"><b>rejected</b><br>{html.escape(path)}<br>'
                f'<span class="flag">{html.escape(str(row.error))}</span></div>')
        cards.append(((0, 0, 0.0), _card("reject", path, body)))
        if progress is not None:
            progress(1)
    for path, grp in (results.groupby("image_path", sort=False) if len(results) else []):
        grp = grp.sort_values("rank")
        top = grp.iloc[0]
        decision = str(top["decision"])
        kind = "unknown" if decision == "unknown" else "match"
        flags = _flags(top.get("quality_flags"))
        probe_img = thumbs.face(where.get(str(path), str(path)), aligned=aligned)
        quality = " · ".join(f"{k} {_fmt(top.get(k), f)}" for k, f in
                             (("faces_found", ".0f"), ("face_score", ".2f"), ("interocular_px", ".0f"),
                              ("sharpness", ".2f"), ("yaw_deg", ".0f")) if k in grp.columns and not pd.isna(top.get(k)))
        meta = (f'<div class="meta"><b>{html.escape(decision)}</b><br>{html.escape(str(path))}<br>'
                f'top-1 score {_fmt(top["score"], ".3f")} vs threshold {_fmt(threshold, ".3f")}'
                + (f"<br>{html.escape(quality)}" if quality else "")
                + (f'<br><span class="flag">flags: {html.escape(flags)}</span>' if flags else "") + "</div>")
        cand = []
        for c in grp.itertuples(index=False):
            ident = str(c.identity)
            above = threshold is not None and float(c.score) >= threshold
            cand.append(f'<figure class="{"hit" if ident == decision else "cand"}">'
                        f'{_img(thumbs.face(first_photo.get(ident)), ident)}<figcaption>#{int(c.rank)} '
                        f'{html.escape(ident)}<br>{_fmt(c.score, ".3f")} {"&ge;" if above else "&lt;"} '
                        f'{_fmt(threshold, ".3f")}</figcaption></figure>')
        body = (f'<figure>{_img(probe_img, "probe")}<figcaption>probe</figcaption></figure>{meta}'
                f'<div class="cands">{"".join(cand)}</div>')
        order = (1 if kind == "unknown" else 2, 0 if flags else 1, float(top["score"]))
        cards.append((order, _card(kind, str(path), body)))
        if progress is not None:
            progress(1)
    cards.sort(key=lambda t: t[0])

    n_rej = len(rejects)
    n_unknown = sum(1 for o, _ in cards if o[0] == 1)
    n_match = sum(1 for o, _ in cards if o[0] == 2)
    model_version = str(results["model_version"].iloc[0]) if len(results) and "model_version" in results else "-"
    sections = []
    for key, head in ((0, f"Rejected ({n_rej})"), (1, f"Unknown ({n_unknown})"), (2, f"Matched ({n_match})")):
        items = [c for o, c in cards if o[0] == key]
        sections.append(f'<h2 id="g{key}">{head}</h2>\n' + ("\n".join(items) if items else "<p>none</p>"))
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>{n_rej + n_unknown + n_match} probe(s): {n_rej} rejected, {n_unknown} unknown, {n_match} matched. "
            f"Threshold {_fmt(threshold, '.4f')} (cosine); model {html.escape(model_version)}; faces "
            f"{'aligned by ' + html.escape(prep.alignment) if prep is not None and prep.alignment else 'centre-cropped'}"
            f".</p>\n" + "\n".join(sections) + "\n</body></html>\n")
    dest = out / PAGE
    write_bytes_atomic(dest, page.encode("utf-8"))
    return dest


def _card(kind: str, path: str, body: str) -> str:
    return f'<div class="probe {kind}" data-kind="{kind}" data-path="{html.escape(path)}">{body}</div>'
