"""One-shot identification from ONE raw photo vs ONE framed LFW photo, with saved models (issue 12, item 5).

The people are the dev folds' (6-7 of the pairs file: no model trained on them). Each person with >= 2
images and a clear single face in their first photo enrols that one photo, in two galleries: the LFW photo
itself, and a "raw photo" made from it (the face pasted on generated clutter at a random place, face width
90-300 px, in-plane rotation up to 30 degrees, JPEG quality 92; `tests/pipeline/faces/synth.py`). Their
other photos (up to 3 each) are the probes. Everything goes through the product path: `enroll_chunk` into a
real store, `identify_chunk` (detect, align, embed as the model was saved). Rank-1 of both galleries and the
gap are reported per model and per raw-photo seed; `--sface` adds the SFace teacher on the same aligned crops
as a reference.

    .venv/bin/python bench/raw_photo_gap.py --model runs/distilled60 --seeds 12,13,14 --sface
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "pipeline" / "faces"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import synth  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.data.lfw import lfw_layout  # noqa: E402
from pipeline.data.pairs import pair_people, parse_pairs  # noqa: E402
from pipeline.faces import AlignerConfig, FaceAligner  # noqa: E402
from pipeline.faces.policy import Mode  # noqa: E402
from pipeline.serve.gallery import enroll_chunk, identify_chunk, open_gallery  # noqa: E402

QUERIES_PER_PERSON = 3


def dev_people(data: Path, folds: tuple[int, ...] = (6, 7)) -> tuple[Path, list[str]]:
    root, pairs = lfw_layout(data)
    if pairs is None:
        sys.exit(f"{data}: no pairs file")
    p = parse_pairs(pairs)
    return root, sorted(pair_people(p[p["fold"].isin(folds)]))


def build_people(root: Path, names: list[str], aligner: FaceAligner, seed: int, out: Path) -> dict[str, pd.DataFrame]:
    """gallery (LFW photo), raw (the same face pasted on clutter), probes; one row per person that qualifies."""
    rng = np.random.default_rng(seed)
    rows = []
    for person in names:
        imgs = sorted(str(x) for x in (root / person).glob("*.jpg"))
        if len(imgs) < 2:
            continue
        rgb = synth.read_rgb(imgs[0])
        dets = aligner.detector.detect(rgb)
        if len(dets) != 1 or dets[0].score < 0.85 or not aligner.align_image(rgb, mode=Mode.ENROL).accepted:
            continue
        src = synth.SourceFace(imgs[0], rgb, dets[0].box, dets[0].landmarks.astype(np.float32))
        canvas = synth.raw_photo(src, rng)
        raw = out / f"{person}_raw.jpg"
        Image.fromarray(canvas).save(raw, quality=92)
        rows.append((person, imgs[0], str(raw), imgs[1: 1 + QUERIES_PER_PERSON]))

    def table(paths: list[str], ids: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"image_path": paths, "abs_path": paths, "identity": ids})

    names_ok = [r[0] for r in rows]
    probes = [(q, r[0]) for r in rows for q in r[3]]
    return {"lfw": table([r[1] for r in rows], names_ok), "raw": table([r[2] for r in rows], names_ok),
            "probes": table([q for q, _ in probes], [n for _, n in probes])}


def rank1_model(model_dir: str, people: dict[str, pd.DataFrame], work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind in ("lfw", "raw"):
        store, model = open_gallery(work / f"{Path(model_dir).name}-{kind}", model_dir, create=True)
        res = enroll_chunk(store, model, people[kind])
        if len(res.rejects):
            print(f"  {kind}: {len(res.rejects)} enrolment reject(s), e.g. {res.rejects.iloc[0].to_dict()}")
        hits = identify_chunk(store, model, people["probes"].drop(columns=["identity"]), top_k=1).results
        truth = dict(zip(people["probes"]["image_path"], people["probes"]["identity"]))
        top = hits[hits["rank"] == 1]  # the nearest enrolled person, whatever the decision
        out[kind] = float(np.mean([truth[p] == i for p, i in zip(top["image_path"], top["identity"])]))
        out[f"{kind}_probes_answered"] = len(top)
    return out


def rank1_sface(people: dict[str, pd.DataFrame], aligner: FaceAligner) -> dict[str, float]:
    from pipeline.model.teachers import create_teacher

    sface = create_teacher("sface")

    def embed(table: pd.DataFrame, mode: Mode) -> tuple[np.ndarray, np.ndarray]:
        outs = aligner.align_batch(table["abs_path"].tolist(), mode=mode)
        ok = np.array([o.accepted for o in outs])
        return sface.embed(np.stack([o.crop for o in outs if o.accepted])), ok

    probes, ok_p = embed(people["probes"], Mode.QUERY)
    truth = people["probes"]["identity"].to_numpy()[ok_p]
    out: dict[str, float] = {}
    for kind in ("lfw", "raw"):
        gal, ok = embed(people[kind], Mode.ENROL)
        names = people[kind]["identity"].to_numpy()[ok]
        out[kind] = float(np.mean(names[np.argmax(probes @ gal.T, axis=1)] == truth))
        out[f"{kind}_probes_answered"] = int(ok_p.sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--model", action="append", default=[], help="a saved model directory (repeatable)")
    p.add_argument("--sface", action="store_true", help="also the SFace teacher (reference)")
    p.add_argument("--seeds", default="12,13,14", help="raw-photo seeds, comma-separated")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "raw_photo_gap.json"))
    a = p.parse_args()
    root, names = dev_people(Path(a.data))
    aligner = FaceAligner(AlignerConfig())
    rows = []
    t0 = time.time()
    for seed in [int(s) for s in a.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            people = build_people(root, names, aligner, seed, Path(tmp))
            n, q = len(people["lfw"]), len(people["probes"])
            print(f"seed {seed}: {n} dev people enrol one photo, {q} probes")
            entries = [(m, lambda m=m: rank1_model(m, people, Path(tmp))) for m in a.model]
            if a.sface:
                entries.append(("sface", lambda: rank1_sface(people, aligner)))
            for name, run in entries:
                r = run()
                rows.append({"model": name, "seed": seed, "people": n, "probes": q, **r,
                             "gap_points": round(100 * (r["lfw"] - r["raw"]), 2)})
                print(f"  {name}: rank-1 LFW photo {100 * r['lfw']:.1f} %, raw photo {100 * r['raw']:.1f} %, "
                      f"gap {100 * (r['lfw'] - r['raw']):+.1f} points")
    summary = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        summary[name] = {"lfw": float(np.mean([r["lfw"] for r in mine])), "raw": float(np.mean([r["raw"] for r in mine])),
                         "gap_points_mean": float(np.mean([r["gap_points"] for r in mine])),
                         "gap_points_each": [r["gap_points"] for r in mine]}
        print(f"{name}: mean rank-1 LFW {100 * summary[name]['lfw']:.1f} %, raw {100 * summary[name]['raw']:.1f} %, "
              f"gap {summary[name]['gap_points_mean']:+.1f} points over seeds {a.seeds}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
                                       "command": " ".join(sys.argv), "seconds": round(time.time() - t0),
                                       "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
