"""Item 5 of issue 12: enrolling ONE raw photo (the face somewhere on a cluttered picture, any scale, turned in
plane by up to 30 degrees, JPEG) identifies a person as well as enrolling the framed LFW photo itself.

40 real people the models never trained on (the end of the alphabet; the tests' training subset is the start)
enrol one photo each, in two galleries: the LFW photo, and the same photo pasted on clutter (``synth.paste``).
Their other LFW photos are the probes; one-shot rank-1 is compared.

- with the SFace teacher on aligned crops (an accurate embedding): the gap must be within 3 points;
- with the small aligned test model, through the real `enroll_chunk` / `identify_chunk` (its rank-1 is low and
  noisy on 40 people, so only a loose bound is asserted; the numbers are printed, see docs/reliability.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth
from PIL import Image

from pipeline.faces import FaceAligner
from pipeline.faces.policy import Mode
from pipeline.model.artifacts import load_model
from pipeline.serve.gallery import enroll_chunk, identify_chunk, open_gallery

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

N_PEOPLE = 40
QUERIES_PER_PERSON = 3
SEED = 12


def _table(paths: list[str], identities: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"image_path": paths, "abs_path": paths})
    if identities is not None:
        df["identity"] = identities
    return df


@pytest.fixture(scope="module")
def people(lfw_root: Path, real_subset: Path, aligner: FaceAligner, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """gallery (LFW photo), raw (the same face pasted on clutter), probes (their other photos), 40 people."""
    trained = set(pd.read_csv(real_subset)["identity"])
    rng = np.random.default_rng(SEED)
    out = tmp_path_factory.mktemp("raw")
    rows = []
    for person in sorted(os.listdir(lfw_root), reverse=True):
        imgs = sorted(str(p) for p in (lfw_root / person).glob("*.jpg"))
        if person in trained or len(imgs) < 3:
            continue
        rgb = synth.read_rgb(imgs[0])
        dets = aligner.detector.detect(rgb)
        # a clear single face to paste (like synth.load_sources) that the enrolment policy accepts as it is
        if len(dets) != 1 or dets[0].score < 0.85 or not aligner.align_image(rgb, mode=Mode.ENROL).accepted:
            continue
        src = synth.SourceFace(imgs[0], rgb, dets[0].box, dets[0].landmarks.astype(np.float32))
        canvas = synth.raw_photo(src, rng)
        raw = out / f"{person}_raw.jpg"
        Image.fromarray(canvas).save(raw, quality=92)
        rows.append((person, imgs[0], str(raw), imgs[1 : 1 + QUERIES_PER_PERSON]))
        if len(rows) == N_PEOPLE:
            break
    assert len(rows) == N_PEOPLE
    names = [r[0] for r in rows]
    probes = [(q, r[0]) for r in rows for q in r[3]]
    return {"lfw": _table([r[1] for r in rows], names), "raw": _table([r[2] for r in rows], names),
            "probes": _table([p for p, _ in probes], [n for _, n in probes])}


def _rank1(gallery: np.ndarray, names: list[str], probes: np.ndarray, truth: list[str]) -> float:
    best = np.argmax(probes @ gallery.T, axis=1)
    return float(np.mean([names[i] == t for i, t in zip(best, truth, strict=True)]))


def test_sface_raw_photo_enrolment_is_within_3_points_of_the_lfw_photo(people: dict, aligner: FaceAligner,
                                                                        capsys: pytest.CaptureFixture) -> None:
    from pipeline.model.teachers import create_teacher

    sface = create_teacher("sface")

    def embed(table: pd.DataFrame, mode: Mode) -> tuple[np.ndarray, list[bool]]:
        outs = aligner.align_batch(table["abs_path"].tolist(), mode=mode)
        ok = [o.accepted for o in outs]
        crops = np.stack([o.crop for o in outs if o.accepted])
        return sface.embed(crops), ok

    lfw, ok_lfw = embed(people["lfw"], Mode.ENROL)
    raw, ok_raw = embed(people["raw"], Mode.ENROL)
    probes, ok_p = embed(people["probes"], Mode.QUERY)
    # every raw photo must be found and pass the enrolment policy: the comparison is one-shot for everyone
    assert all(ok_raw), [p for p, k in zip(people["raw"]["image_path"], ok_raw, strict=True) if not k]
    assert all(ok_lfw)
    names_lfw = people["lfw"]["identity"].tolist()
    truth = people["probes"]["identity"][ok_p].tolist()
    r_lfw = _rank1(lfw, names_lfw, probes, truth)
    r_raw = _rank1(raw, people["raw"]["identity"].tolist(), probes, truth)
    with capsys.disabled():
        print(f"\nSFace one-shot rank-1 over {len(truth)} probes of {N_PEOPLE} people: LFW photo {100 * r_lfw:.1f} %, "
              f"raw photo {100 * r_raw:.1f} %, gap {100 * (r_lfw - r_raw):+.1f} points")
    assert r_lfw > 0.85
    assert r_raw >= r_lfw - 0.03



def test_small_aligned_model_raw_photo_enrolment_through_the_gallery(people: dict, aligned_model: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    model = load_model(aligned_model)
    assert model.meta["preprocessing"].get("face"), "the model must record its alignment"
    rank1 = {}
    for kind in ("lfw", "raw"):
        store, _ = open_gallery(tmp_path / kind, aligned_model, create=True)
        enrolled = enroll_chunk(store, model, people[kind])
        assert len(enrolled.results) == N_PEOPLE, enrolled.rejects.to_dict("records")
        assert (enrolled.results["faces_found"] >= 1).all()
        res = identify_chunk(store, model, people["probes"], top_k=1, threshold=-1.0).results
        truth = dict(zip(people["probes"]["image_path"], people["probes"]["identity"], strict=True))
        rank1[kind] = float(np.mean([truth[p] == i for p, i in zip(res["image_path"], res["identity"], strict=True)]))
    gap = rank1["lfw"] - rank1["raw"]
    with capsys.disabled():
        print(f"\nsmall aligned model one-shot rank-1 ({N_PEOPLE} people): LFW photo {100 * rank1['lfw']:.1f} %, "
              f"raw photo {100 * rank1['raw']:.1f} %, gap {100 * gap:+.1f} points")
    assert rank1["lfw"] > 2.0 / N_PEOPLE  # better than chance (2.5 %)
    assert gap <= 0.15  # noisy at this size: the 3-point bound is asserted with SFace above
