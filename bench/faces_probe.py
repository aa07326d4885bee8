"""Face detection + alignment probe (pipeline.faces, YuNet 2023mar int8bq):

  (a) detection success on every shared LFW photo (target >= 99.5 %), plus enrolment-policy outcomes;
  (b) a seeded set of synthetic raw photos (LFW faces pasted 40-400 px wide, rotated +-30 deg, on clutter;
      grey, low-contrast and no-face variants): recall, false detections per image, landmark error
      (mean of the 5 points / ground-truth inter-ocular distance) against the known paste transform;
  (c) detect+align speed on 250x250 photos, one process, one OpenCV thread (target >= 150 images/s per core),
      with the machine's load average recorded around each timing (the machine may be shared).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/faces_probe.py --data ../shared/data --photos 300

Writes bench/results/faces_probe.json and prints a summary.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "pipeline" / "faces"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import synth  # noqa: E402

from pipeline.data.images import decode_image  # noqa: E402
from pipeline.faces import AlignerConfig, FaceAligner  # noqa: E402
from pipeline.faces.weights import MODEL_FILES  # noqa: E402

WIDTH_BINS = (40, 60, 100, 160, 250, 401)
_aligner: FaceAligner | None = None
_sources: list[synth.SourceFace] | None = None


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _get_aligner() -> FaceAligner:
    global _aligner
    if _aligner is None:
        _aligner = FaceAligner(AlignerConfig(cv_threads=1))
    return _aligner


# ----------------------------------------------------------------------------------------------- (a) LFW
def _lfw_one(path: str) -> dict:
    al = _get_aligner()
    rgb = decode_image(path)
    out = al.align_image(rgb)
    d = out.detection
    centre = None if d is None else float(np.hypot(d.center[0] - rgb.shape[1] / 2, d.center[1] - rgb.shape[0] / 2))
    return {"path": path, "found": out.faces_found, "centre_dist": centre,
            "accepted": out.accepted, "code": out.reject_code, "quality": out.quality}


def probe_lfw(lfw_root: Path, workers: int) -> dict:
    paths = synth.lfw_paths(lfw_root)
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        rows = pool.map(_lfw_one, paths, chunksize=64)
    secs = time.perf_counter() - t
    found = [r for r in rows if r["found"] > 0]
    central = [r for r in found if r["centre_dist"] is not None and r["centre_dist"] < 50]  # subject = LFW face
    q = [r["quality"] for r in rows if r["quality"].get("yaw_deg") is not None]
    codes = collections.Counter(r["code"] or "accepted" for r in rows)
    return {
        "images": len(rows),
        "detected": len(found),
        "detection_rate": round(len(found) / len(rows), 5),
        "subject_within_50px_of_centre_rate": round(len(central) / len(rows), 5),
        "target_detection_rate": 0.995,
        "several_faces_rate": round(sum(r["found"] > 1 for r in rows) / len(rows), 4),
        "enrol_outcomes": dict(codes.most_common()),
        "enrol_accept_rate": round(codes["accepted"] / len(rows), 5),
        "quality_quantiles_q01_q50_q99": {
            k: [round(float(v), 3) for v in np.quantile([x[k] for x in q], [0.01, 0.5, 0.99])]
            for k in ("interocular_px", "score", "sharpness", "yaw_deg")},
        "missed": [r["path"].split("lfw/")[-1] for r in rows if r["found"] == 0][:50],
        "wall_s": round(secs, 1), "processes": workers,
    }


# ----------------------------------------------------------------------------------------------- (b) synthetic
def _init_synth(lfw_root: str, n_sources: int, seed: int) -> None:
    global _sources
    _sources = synth.load_sources(synth.lfw_paths(lfw_root), _get_aligner().detector, n_sources, seed=seed)


def _synth_one(photo_seed: int) -> dict:
    assert _sources is not None
    photo = synth.make_photo(_sources, photo_seed)
    dets = _get_aligner().detector.detect(photo.image)
    matches, false = synth.match_detections(photo.faces, [d.landmarks for d in dets])
    by_face = {m.face: m for m in matches}
    faces = [{"width": f.face_width_px, "rotation": f.rotation_deg, "found": i in by_face,
              "nme": by_face[i].nme if i in by_face else None} for i, f in enumerate(photo.faces)]
    return {"seed": photo_seed, "variant": photo.variant, "shape": list(photo.image.shape[:2]), "faces": faces,
            "false": len(false), "false_scores": [round(dets[j].score, 3) for j in false]}


def _summary(faces: list[dict]) -> dict:
    found = [f for f in faces if f["found"]]
    nme = np.array([f["nme"] for f in found]) if found else np.array([np.nan])
    return {"faces": len(faces), "recall": round(len(found) / len(faces), 4) if faces else None,
            "nme_median": round(float(np.median(nme)), 4), "nme_mean": round(float(np.mean(nme)), 4),
            "nme_p90": round(float(np.quantile(nme, 0.9)), 4),
            "nme_over_0.25_rate": round(float(np.mean(nme > 0.25)), 4)}


def probe_synth(lfw_root: Path, n_photos: int, seed: int, workers: int) -> dict:
    seeds = [seed * 100003 + i for i in range(n_photos)]
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, initializer=_init_synth, initargs=(str(lfw_root), 400, seed)) as pool:
        rows = pool.map(_synth_one, seeds, chunksize=4)
    secs = time.perf_counter() - t
    faces = [dict(f, variant=r["variant"]) for r in rows for f in r["faces"]]
    by_bin = {}
    for lo, hi in itertools.pairwise(WIDTH_BINS):
        by_bin[f"{lo}-{hi - 1}px"] = _summary([f for f in faces if lo <= f["width"] < hi])
    by_rot = {f"|rotation| {lo}-{hi} deg": _summary([f for f in faces if lo <= abs(f["rotation"]) < hi])
              for lo, hi in ((0, 10), (10, 20), (20, 30.01))}
    by_variant = {}
    for v in synth.VARIANTS:
        vr = [r for r in rows if r["variant"] == v]
        by_variant[v] = {"photos": len(vr), "false_per_image": round(sum(r["false"] for r in vr) / max(1, len(vr)), 4),
                         **_summary([f for f in faces if f["variant"] == v])}
    return {
        "photos": len(rows), "seed": seed, "sources": 400,
        "faces_per_photo": dict(collections.Counter(len(r["faces"]) for r in rows)),
        "all_faces_40px_plus": _summary(faces), "target_recall": 0.98,
        "false_detections_per_image": round(sum(r["false"] for r in rows) / len(rows), 4),
        "target_false_per_image": 0.05,
        "false_detection_scores": sorted(s for r in rows for s in r["false_scores"]),
        "by_face_width": by_bin, "by_rotation": by_rot, "by_variant": by_variant,
        "missed_faces": [{"seed": r["seed"], "variant": r["variant"], "width": round(f["width"], 1),
                          "rotation": round(f["rotation"], 1)} for r in rows for f in r["faces"] if not f["found"]],
        "wall_s": round(secs, 1), "processes": workers,
    }


# ----------------------------------------------------------------------------------------------- (c) speed
def probe_speed(lfw_root: Path, n_images: int, repeats: int) -> dict:
    cv2.setNumThreads(1)
    al = _get_aligner()
    paths = synth.lfw_paths(lfw_root)
    pick = paths[:: max(1, len(paths) // n_images)][:n_images]
    images = [decode_image(p) for p in pick]
    for im in images[:20]:  # warm-up
        al.align_image(im)
    runs = []
    for _ in range(repeats):
        for name, fn in (("detect", al.detector.detect), ("detect_align", al.align_image)):
            before = load_avg()
            t = time.perf_counter()
            for im in images:
                fn(im)
            secs = time.perf_counter() - t
            runs.append({"what": name, "images_per_s": round(len(images) / secs, 1), "load_avg_before": before,
                         "load_avg_after": load_avg()})
    batch_before = load_avg()
    t = time.perf_counter()
    al.align_batch(images, workers=2)
    batch = {"images_per_s": round(len(images) / (time.perf_counter() - t), 1), "threads": 2,
             "load_avg_before": batch_before, "load_avg_after": load_avg()}
    da = [r["images_per_s"] for r in runs if r["what"] == "detect_align"]
    return {"images": len(images), "size": "250x250", "process": 1, "cv_threads": 1,
            "detect_align_images_per_s_best": max(da), "detect_align_images_per_s_median": float(np.median(da)),
            "target_images_per_s": 150, "runs": runs, "align_batch_2_threads": batch,
            "note": "load_avg = os.getloadavg() (1, 5, 15 min) around each timing; other work may share the cores"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes for (a) and (b); timing uses one")
    p.add_argument("--speed-images", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", default="", help="comma list of parts to skip: lfw,synth,speed")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "faces_probe.json"))
    args = p.parse_args()
    lfw_root = Path(args.data) / "lfw"
    skip = set(filter(None, args.skip.split(",")))
    al = _get_aligner()
    result: dict = {
        "env": {"cv2": cv2.__version__, "numpy": np.__version__, "python": platform.python_version(),
                "nproc": os.cpu_count(), "detector": al.version, "policy": al.config.policy.__dict__,
                "weights": {k: {"file": v.filename, "sha256": v.sha256, "licence": v.licence}
                            for k, v in MODEL_FILES.items()},
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_avg_start": load_avg()},
    }
    if "speed" not in skip:  # first, while nothing else of ours runs
        result["speed"] = probe_speed(lfw_root, args.speed_images, args.repeats)
        print(f"speed: detect+align {result['speed']['detect_align_images_per_s_best']:.0f} img/s best "
              f"(median {result['speed']['detect_align_images_per_s_median']:.0f}) on 1 process/1 thread; "
              f"load {[r['load_avg_before'] for r in result['speed']['runs']]}", flush=True)
    if "lfw" not in skip:
        result["lfw"] = probe_lfw(lfw_root, args.workers)
        r = result["lfw"]
        print(f"lfw: {r['detected']}/{r['images']} detected ({100 * r['detection_rate']:.2f} %), enrol accepted "
              f"{100 * r['enrol_accept_rate']:.2f} %, outcomes {r['enrol_outcomes']}", flush=True)
    if "synth" not in skip:
        result["synth"] = probe_synth(lfw_root, args.photos, args.seed, args.workers)
        s = result["synth"]
        a = s["all_faces_40px_plus"]
        print(f"synth: {s['photos']} photos, {a['faces']} faces: recall {a['recall']:.4f}, false/img "
              f"{s['false_detections_per_image']:.3f}, NME median {a['nme_median']:.3f} p90 {a['nme_p90']:.3f}",
              flush=True)
        for k, v in s["by_face_width"].items():
            print(f"  width {k:>9}: recall {v['recall']:.3f} NME median {v['nme_median']:.3f} n={v['faces']}")
        for k, v in s["by_variant"].items():
            rec = "n/a  " if v["recall"] is None else f"{v['recall']:.3f}"
            print(f"  {k:>12}: recall {rec} false/img {v['false_per_image']:.3f} photos={v['photos']}")
        for k, v in s["by_rotation"].items():
            print(f"  {k:>20}: recall {v['recall']:.3f} NME median {v['nme_median']:.3f} n={v['faces']}")
    result["env"]["load_avg_end"] = load_avg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
