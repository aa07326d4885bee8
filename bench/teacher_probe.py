"""Teacher probe: SFace (and optionally dlib) on the dev folds 6-7 pairs (1,200 pairs) from our aligner's crops,
speed on one thread, agreement with OpenCV's own alignCrop, and the full-LFW teacher cache build.

    OMP_WAIT_POLICY=PASSIVE python bench/teacher_probe.py --data ../shared/data [--teachers sface,dlib]

Writes bench/results/teacher_probe.json. Every timing is stored with the machine's load average (the machine
may be shared). Images where YuNet finds no face are aligned with the mean landmarks of the others (counted).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.data.images import decode_image  # noqa: E402
from pipeline.data.pairs import parse_pairs  # noqa: E402
from pipeline.evaluate.metrics import verification_report  # noqa: E402
from pipeline.evaluate.protocol import ten_subfolds  # noqa: E402
from pipeline.faces import AlignerConfig, FaceAligner, warp_to_template  # noqa: E402
from pipeline.model.teachers import TeacherCache, create_teacher  # noqa: E402

DEV_FOLDS = (6, 7)


def load() -> dict[str, float]:
    """1/5/15-minute load averages and the core count."""
    a, b, c = os.getloadavg()
    return {"load1": round(a, 2), "load5": round(b, 2), "load15": round(c, 2), "cores": os.cpu_count() or 0}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LfwCrops:
    """crops_provider for the cache: sha256 -> aligned crop of that LFW file (query mode; no face -> mean
    landmarks). Builds its aligner lazily per process (safe after fork)."""

    def __init__(self, paths_by_sha: dict[str, Path], fallback_landmarks: np.ndarray) -> None:
        self.paths = paths_by_sha
        self.fallback = fallback_landmarks
        self._aligner: tuple[int, FaceAligner] | None = None

    def aligner(self) -> FaceAligner:
        if self._aligner is None or self._aligner[0] != os.getpid():
            self._aligner = (os.getpid(), FaceAligner(AlignerConfig(mode="query", cv_threads=1, workers=1)))
        return self._aligner[1]

    def crop(self, path: Path) -> tuple[np.ndarray, bool]:
        rgb = decode_image(path)
        out = self.aligner().align_image(rgb, source=str(path))
        if out.accepted:
            return out.crop, True
        return warp_to_template(rgb, self.fallback, 112), False

    def __call__(self, shas: list[str]) -> np.ndarray:
        return np.stack([self.crop(self.paths[s])[0] for s in shas])


def dev_metrics(emb: dict[str, np.ndarray], pairs, key1: str, key2: str) -> dict[str, object]:
    s = np.array([float(emb[a] @ emb[b]) for a, b in zip(pairs[key1], pairs[key2])])
    y = pairs["same"].to_numpy(bool)
    folds = ten_subfolds(pairs["fold"].to_numpy(), y)
    rep = verification_report(s, y, folds, (1e-3, 1e-2)).to_dict()
    return {"pairs": rep["pairs"], "accuracy_10fold": round(rep["accuracy"], 4),
            "accuracy_10fold_std": round(rep["accuracy_std"], 4), "auc": round(rep["auc"], 5),
            "eer": round(rep["eer"], 4), "tar_at_far": {k: round(v, 4) for k, v in rep["tar_at_far"].items()},
            "genuine_mean": round(float(s[y].mean()), 4), "impostor_mean": round(float(s[~y].mean()), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", "../shared/data"))
    p.add_argument("--teachers", default="sface", help="comma list: sface, dlib")
    p.add_argument("--cache-dir", default="/tmp/facepipe_teacher_cache")
    p.add_argument("--cache-teacher", default="sface", help="teacher of the full-LFW cache build ('' = skip)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "teacher_probe.json"))
    args = p.parse_args()
    data = Path(args.data)
    lfw = data / "lfw"
    cv2.setNumThreads(1)
    result: dict[str, object] = {"machine": {"python": platform.python_version(), "opencv": cv2.__version__,
                                             "numpy": np.__version__, "threads": 1}}

    # ---- dev images and their crops (our aligner, 1 thread)
    pairs = parse_pairs(data / "lfw_pairs_dev.txt")
    dev = pairs[pairs["fold"].isin(DEV_FOLDS)].reset_index(drop=True)
    rel = sorted(set(dev["path1"]) | set(dev["path2"]))
    aligner = FaceAligner(AlignerConfig(mode="query", cv_threads=1, workers=1))
    crops, found, dets = {}, {}, {}
    rgbs = {}
    t0, l0 = time.perf_counter(), load()
    for r in rel:
        rgb = decode_image(lfw / r)
        out = aligner.align_image(rgb, source=r)
        found[r] = out.accepted
        if out.accepted:
            crops[r], dets[r] = out.crop, out.detection
        rgbs[r] = rgb
    align_s = time.perf_counter() - t0
    mean_lm = np.mean([d.landmarks for d in dets.values()], axis=0).astype(np.float32)
    for r in rel:
        if not found[r]:
            crops[r] = warp_to_template(rgbs[r], mean_lm, 112)
    result["dev"] = {"folds": list(DEV_FOLDS), "pairs": len(dev), "images": len(rel),
                     "no_face_fallback": int(sum(not v for v in found.values())),
                     "crops": "pipeline.faces.FaceAligner (YuNet 2023mar int8bq, query mode, Umeyama to ArcFace-112)",
                     "aligner_version": aligner.version}
    result["align_speed"] = {"images": len(rel), "seconds": round(align_s, 2),
                             "images_per_s": round(len(rel) / align_s, 1), **l0}
    print(json.dumps(result["dev"]), flush=True)
    batch = np.stack([crops[r] for r in rel])

    # ---- teachers: speed on 1 thread and dev metrics
    result["teachers"] = {}
    for name in [t for t in args.teachers.split(",") if t]:
        teacher = create_teacher(name, **({"threads": 1} if name == "sface" else {}))
        teacher.embed(batch[:4])  # warm-up
        variants = {"batched": teacher}
        if name == "sface":
            variants["one_per_forward"] = create_teacher("sface", batch_size=1)
        row: dict[str, object] = {"version": teacher.version, "licence": teacher.licence, "speed": {}}
        emb_main = None
        for vname, t in variants.items():
            l1 = load()
            t1 = time.perf_counter()
            e = t.embed(batch)
            dt = time.perf_counter() - t1
            row["speed"][vname] = {"batch_size": getattr(t, "batch_size", None), "seconds": round(dt, 2),
                                   "ms_per_image": round(1000 * dt / len(batch), 2),
                                   "images_per_s": round(len(batch) / dt, 1), **l1}
            if emb_main is None:
                emb_main = e
            else:
                row["speed"][vname]["max_abs_diff_vs_batched"] = float(np.abs(e - emb_main).max())
        emb = {r: emb_main[i] for i, r in enumerate(rel)}
        row["dev"] = dev_metrics(emb, dev, "path1", "path2")
        print(name, json.dumps(row), flush=True)
        result["teachers"][name] = row

        if name == "sface":
            # our crop vs OpenCV's own alignCrop from the same YuNet detection
            rec = cv2.FaceRecognizerSF.create(str(teacher.model_path), "")
            theirs, ours = [], []
            for r, d in dets.items():
                face = np.array([*d.box, *d.landmarks.reshape(-1), d.score], dtype=np.float32)[None]
                theirs.append(rec.alignCrop(np.ascontiguousarray(rgbs[r][:, :, ::-1]), face)[:, :, ::-1])
                ours.append(crops[r])
            theirs_a, ours_a = np.stack(theirs), np.stack(ours)
            diff = np.abs(theirs_a.astype(np.int16) - ours_a.astype(np.int16))
            e_t = teacher.embed(np.ascontiguousarray(theirs_a))
            cos = (e_t * np.stack([emb[r] for r in dets])).sum(1)
            emb_t = dict(emb)
            emb_t.update({r: e_t[i] for i, r in enumerate(dets)})
            result["aligncrop_check"] = {
                "images": len(dets), "pixel_max_abs_diff": int(diff.max()),
                "pixel_mean_abs_diff": round(float(diff.mean()), 4),
                "pixels_differing_frac": round(float((diff > 0).mean()), 5),
                "feature_cosine_min": round(float(cos.min()), 6), "feature_cosine_mean": round(float(cos.mean()), 7),
                "dev_with_aligncrop": dev_metrics(emb_t, dev, "path1", "path2")}
            print("aligncrop", json.dumps(result["aligncrop_check"]), flush=True)

    # ---- full-LFW cache build
    if args.cache_teacher:
        all_paths = sorted(lfw.glob("*/*.jpg"))
        t_h, l_h = time.perf_counter(), load()
        by_sha: dict[str, Path] = {}
        for q in all_paths:
            by_sha.setdefault(sha256_file(q), q)
        hash_s = time.perf_counter() - t_h
        teacher = create_teacher(args.cache_teacher)
        cache = TeacherCache(args.cache_dir)
        provider = LfwCrops(by_sha, mean_lm)
        shas = list(by_sha)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 15 or done == total:
                last[0] = now
                print(f"  cache {done}/{total}", file=sys.stderr, flush=True)

        l2 = load()
        t2 = time.perf_counter()
        emb_all = cache.get_or_compute(teacher, aligner.version, shas, provider, workers=args.workers,
                                       progress=progress)
        build_s = time.perf_counter() - t2
        l3 = load()
        t3 = time.perf_counter()
        again = cache.get_or_compute(teacher, aligner.version, shas, provider, workers=args.workers)
        reuse_s = time.perf_counter() - t3
        entry = cache.path_for(teacher, aligner.version)
        result["cache_build"] = {
            "teacher": teacher.version, "aligner_version": aligner.version, "cache_file": str(entry),
            "file_mb": round(entry.stat().st_size / 1e6, 2), "images": len(all_paths), "unique_sha256": len(shas),
            "hash_seconds": round(hash_s, 2), "hash_load": l_h, "workers": args.workers, "threads_per_worker": 1,
            "build_seconds": round(build_s, 1), "build_images_per_s": round(len(shas) / build_s, 1),
            "build_load_before": l2, "build_load_after": l3,
            "reuse_seconds": round(reuse_s, 2), "reuse_identical": bool(np.array_equal(emb_all, again)),
            "note": "build = decode + YuNet + align + SFace per image in 2 worker processes; "
                    "a build_seconds near 0 means the cache already held these rows (delete the folder to re-time)"}
        print("cache", json.dumps(result["cache_build"]), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
