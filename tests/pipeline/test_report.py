"""The review page of `facepipe identify --report DIR` (`pipeline.serve.report.write_review_page`): every image it
references exists and decodes, the HTML parses, rejects and unknowns come first; a headless Chromium renders it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent / "faces"))  # synth.py

import synth

from pipeline.cli import (
    build_parser,
    store_cmds,
)
from pipeline.core.config import Config, to_dict
from pipeline.faces.loader import FacePreprocessing, build_aligner, face_section
from pipeline.model.artifacts import preprocessing_dict, save_model
from pipeline.model.encoder import build_model
from pipeline.serve.gallery import enroll_chunk, identify_chunk, open_gallery
from pipeline.serve.report import write_review_page

pytestmark = [pytest.mark.realdata]


class _Page(HTMLParser):
    """Collects img sources and the probe cards (data-kind) in document order; fails on unbalanced div tags."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.kinds: list[str] = []
        self.paths: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(str(a["src"]))
        if tag == "div":
            self.depth += 1
            if a.get("data-kind"):
                self.kinds.append(str(a["data-kind"]))
                self.paths.append(str(a["data-path"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self.depth -= 1
            assert self.depth >= 0


def _parse(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    p.close()
    assert p.depth == 0
    return p


@pytest.fixture(scope="module")
def run(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An aligned (untrained) model, a gallery of 4 people, probes: 2 gallery photos (match), 2 other people
    (unknown at a 0.999 threshold), a photo without a face and a corrupt file (rejects)."""
    d = tmp_path_factory.mktemp("report")
    prep = FacePreprocessing(1.0, 48, build_aligner("yunet", 112))
    model_dir = d / "model"
    save_model(build_model("test_resnet", 16), model_dir, backbone="test_resnet",
               preprocessing=preprocessing_dict(1.0, 48, False, face=face_section(prep)),
               thresholds={"far=0.001": 0.999}, default_far=1e-3, metrics={}, config=to_dict(Config()))
    photos: dict[str, list[str]] = {}
    for person in sorted(x.name for x in lfw_root.iterdir() if x.is_dir()):  # 6 people whose photo has a face
        imgs = sorted(str(x) for x in (lfw_root / person).glob("*.jpg"))
        if imgs and prep.aligner.align_path(imgs[0], mode="query").accepted:
            photos[person] = imgs
        if len(photos) == 6:
            break
    people = list(photos)
    store, model = open_gallery(d / "index", model_dir, create=True)
    gallery = pd.DataFrame({"image_path": [photos[p][0] for p in people[:4]], "identity": people[:4]})
    assert len(enroll_chunk(store, model, gallery.assign(abs_path=gallery["image_path"])).results) == 4
    noface = d / "noface.png"
    Image.fromarray(synth.background(np.random.default_rng(3), 300, 400)).save(noface)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    probes = [photos[p][0] for p in people[:2]] + [photos[p][0] for p in people[4:]] + [str(noface),
                                                                                     str(d / "corrupt.jpg")]
    table = pd.DataFrame({"image_path": probes, "abs_path": probes})
    r = identify_chunk(store, model, table, top_k=3)
    return {"dir": d, "store": store, "model": model, "results": r.results, "rejects": r.rejects, "probes": table}


def test_page_images_exist_decode_and_rejects_unknowns_come_first(run: dict, tmp_path: Path) -> None:
    res, rej = run["results"], run["rejects"]
    assert len(rej) == 2 and set(res[res["rank"] == 1]["decision"]) >= {"unknown"}
    page = write_review_page(res, rej, run["store"].metadata(), tmp_path / "review", model=run["model"],
                             probes=run["probes"], threshold=run["store"].threshold)
    p = _parse(page)
    n_probes = res["image_path"].nunique() + len(rej)
    assert len(p.kinds) == n_probes
    order = {"reject": 0, "unknown": 1, "match": 2}
    assert [order[k] for k in p.kinds] == sorted(order[k] for k in p.kinds)
    assert p.kinds[:2] == ["reject", "reject"] and "match" in p.kinds and "unknown" in p.kinds
    matched = set(res[(res["rank"] == 1) & (res["decision"] != "unknown")]["image_path"])
    assert {path for path, k in zip(p.paths, p.kinds, strict=True) if k == "match"} == matched
    # probe face + k candidates per answered probe; the no-face photo as itself; nothing for the corrupt file
    n_cands = len(res)
    assert len(p.images) == res["image_path"].nunique() + n_cands + 1
    for src in p.images:
        f = page.parent / src
        assert f.is_file() and not Path(src).is_absolute(), src
        with Image.open(f) as im:
            im.load()
            assert min(im.size) >= 16
    html = page.read_text(encoding="utf-8")
    assert "threshold 0.999" in html and "no_face: no face detected" in html and "unreadable: " in html


def test_aligned_faces_are_the_models_crops(run: dict, tmp_path: Path) -> None:
    """The probe thumbnail of an answered probe is the 112 px aligned crop (not the 250 px photo)."""
    res = run["results"]
    one = res[res["image_path"] == res["image_path"].iloc[0]]
    page = write_review_page(one, run["rejects"].iloc[:0], run["store"].metadata(), tmp_path / "r",
                             model=run["model"], probes=run["probes"], threshold=0.5)
    p = _parse(page)
    with Image.open(page.parent / p.images[0]) as im:
        assert im.size == (112, 112)


def test_identify_report_flag_writes_the_page(run: dict, tmp_path: Path) -> None:
    run["probes"][["image_path"]].to_csv(tmp_path / "probes.csv", index=False)
    args = build_parser().parse_args(["identify", "--index", str(run["dir"] / "index"), "--probes",
                                      str(tmp_path / "probes.csv"), "--out", str(tmp_path / "hits.parquet"), "-q",
                                      "--report", str(tmp_path / "review")])
    lines: list[str] = []
    assert store_cmds.cmd_identify(args, lines.append) == 0
    assert pq.read_table(tmp_path / "hits.parquet").num_rows > 0
    p = _parse(tmp_path / "review" / "index.html")
    assert p.kinds[0] == "reject" and len(p.kinds) == 6


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_chromium_renders_the_page(run: dict, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless browser: `apt-get install chromium` (Debian) to render the review page")
    page = write_review_page(run["results"], run["rejects"], run["store"].metadata(), tmp_path / "review",
                             model=run["model"], probes=run["probes"], threshold=run["store"].threshold)
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[:2] == (1600, 1200)
    # the thumbnails rendered: a page of text alone is nearly all background; faces add many distinct colours
    assert len(np.unique(rgb.reshape(-1, 3)[::7], axis=0)) > 2000
