"""Benchmark of the whole `enroll` path: hash, decode, detect, align, embed, store; before (no alignment) vs after.

    python bench/bench_enroll.py --model-plain runs/m_none --model-aligned runs/m_yunet --images 500 --runs 3 \
        --out docs/benchmarks.md

Both models are small (test_resnet, 48 px input, 32-d embedding); without ``--model-*`` the script trains
them first (0.3 min each on 160 LFW people, the same as the tests' fixture). The enrolled images are real LFW
photos of people the models did not train on (people taken from the end of the alphabet).

Two measurements per model:
- end to end: `pipeline.serve.gallery.enroll_chunk` (ENROL mode, exactly what `facepipe enroll` runs) into
  a fresh store, chunk 1024, wall time, median of ``--runs``; throughput = images / second;
- the steps one by one, single thread, on the same images: sha256 of the file, decode (+ central crop for
  the plain model), detect (YuNet), align (similarity warp + quality + crop/resize), embed (torch, batches of
  256, flip TTA as the model says), store (one atomic commit). Their shares are of the sum of the steps;
  the end-to-end path runs detection/alignment on a thread pool (one worker per core), so its wall time
  is below that sum.
``--out`` replaces the "## Enrolment path" section of a markdown file; ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from docsection import write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: F401  (runtime tuning)
from pipeline.core.io import file_digest
from pipeline.data.images import center_crop_resize, decode_image
from pipeline.faces.align import warp_to_template
from pipeline.faces.loader import preprocessing_from_meta
from pipeline.faces.policy import Mode
from pipeline.faces.quality import measure
from pipeline.model.embed import embed_array
from pipeline.serve.gallery import enroll_chunk, open_gallery, run_chunked

SECTION = "## Enrolment path"


def lfw_people(root: Path) -> list[str]:
    return sorted(p for p in os.listdir(root) if (root / p).is_dir())


def train_manifest(root: Path, out: Path, n_people: int = 160) -> Path:
    rows = []
    for person in lfw_people(root):
        imgs = sorted(os.listdir(root / person))
        if len(imgs) >= 3:
            rows += [(str(root / person / f), person) for f in imgs[:6]]
        if len({r[1] for r in rows}) >= n_people:
            break
    pd.DataFrame(rows, columns=["image_path", "identity"]).to_csv(out, index=False)
    return out


def bench_images(root: Path, n: int) -> pd.DataFrame:
    """``n`` LFW photos of people from the END of the alphabet (never in the training manifest)."""
    rows: list[tuple[str, str]] = []
    for person in reversed(lfw_people(root)):
        rows += [(str(root / person / f), person) for f in sorted(os.listdir(root / person))]
        if len(rows) >= n:
            break
    df = pd.DataFrame(rows[:n], columns=["image_path", "identity"])
    return df.assign(abs_path=df["image_path"])


def train_model(manifest: Path, out: Path, detector: str) -> Path:
    if (out / "model.json").is_file():
        return out
    crop = "1.0" if detector == "yunet" else "0.64"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--data", str(manifest), "--out", str(out), "--minutes",
           "0.3", "-q", "--set", f"data.face_detector={detector}", "--set", "model.backbone=test_resnet",
           "--set", "data.image_size_px=48", "--set", f"data.crop_fraction={crop}", "--set",
           "model.embedding_dim=32", "--set", "train.member_shares=", "--set", "distill.teacher="]
    subprocess.run(cmd, check=True, cwd=REPO)
    return out


def end_to_end(model_dir: Path, images: pd.DataFrame, work: Path) -> tuple[float, float, int, int]:
    """(seconds to open the gallery + load the model, seconds to enrol, enrolled, rejected)."""
    index = work / "gallery"
    shutil.rmtree(index, ignore_errors=True)
    t0 = time.perf_counter()
    store, model = open_gallery(index, model_dir, create=True)
    t1 = time.perf_counter()
    added, rejects = run_chunked(lambda part: enroll_chunk(store, model, part), images, 1024)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(added), len(rejects)


def steps(model_dir: Path, images: pd.DataFrame, work: Path) -> dict[str, float]:
    """Seconds of each step, one thread, same images."""
    import torch

    from pipeline.model.artifacts import load_model

    model = load_model(model_dir)
    pre = model.meta["preprocessing"]
    prep = preprocessing_from_meta(pre, mode=Mode.ENROL)
    paths = images["abs_path"].tolist()
    t: dict[str, float] = {}
    s = time.perf_counter()
    shas = [file_digest(p) for p in paths]
    t["hash"] = time.perf_counter() - s
    s = time.perf_counter()
    rgbs = [decode_image(p) for p in paths]
    t["decode"] = time.perf_counter() - s
    faces: list[np.ndarray] = []
    keep: list[int] = []
    if prep.aligner is None:
        s = time.perf_counter()
        faces = [center_crop_resize(r, prep.crop_fraction, prep.size_px) for r in rgbs]
        t["decode"] += time.perf_counter() - s
        keep = list(range(len(paths)))
    else:
        det = prep.aligner.detector
        pol = prep.aligner.config.policy
        s = time.perf_counter()
        found = [det.detect(r) for r in rgbs]
        t["detect"] = time.perf_counter() - s
        from pipeline.faces.policy import quality_failures, select_subject

        s = time.perf_counter()
        for i, (r, d) in enumerate(zip(rgbs, found)):
            if not d:
                continue
            c = select_subject(d, r.shape, pol)
            crop = warp_to_template(r, d[c.index].landmarks, prep.aligner.config.size_px)
            if c.ambiguous or quality_failures(measure(d[c.index], crop), pol):
                continue
            faces.append(center_crop_resize(crop, prep.crop_fraction, prep.size_px))
            keep.append(i)
        t["align"] = time.perf_counter() - s
    arr = np.stack(faces)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = time.perf_counter()
        emb = embed_array(model.encoder, arr, flip_tta=bool(pre["flip_tta"]), mean=tuple(pre["mean"]),
                          std=tuple(pre["std"]))
        t["embed"] = time.perf_counter() - s
    finally:
        torch.set_num_threads(threads)
    index = work / "steps-gallery"
    shutil.rmtree(index, ignore_errors=True)
    store, _ = open_gallery(index, model_dir, create=True)
    s = time.perf_counter()
    store.enroll(emb, images["identity"].iloc[keep].tolist(), [paths[i] for i in keep], [shas[i] for i in keep],
                 model_version=model.model_version)
    t["store"] = time.perf_counter() - s
    return t


def align_workers(model_dir: Path, images: pd.DataFrame) -> dict[str, float]:
    """Seconds of `FaceAligner.align_batch` (decode + detect + align) on one worker vs one per core."""
    from pipeline.faces.aligner import available_cores
    from pipeline.model.artifacts import load_model

    aligner = preprocessing_from_meta(load_model(model_dir).meta["preprocessing"], mode=Mode.ENROL).aligner
    paths = images["abs_path"].tolist()
    out = {}
    for w in (1, available_cores()):
        times = []
        for _ in range(2):
            s = time.perf_counter()
            aligner.align_batch(paths, workers=w)
            times.append(time.perf_counter() - s)
        out[f"workers={w}"] = round(min(times), 3)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", ""), help="folder holding lfw/")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model-plain", type=Path, help="a data.face_detector=none model (default: train one)")
    ap.add_argument("--model-aligned", type=Path, help="a data.face_detector=yunet model (default: train one)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temp folder)")
    ap.add_argument("--out", type=Path, help="markdown file whose '## Enrolment path' section is replaced")
    ap.add_argument("--json", type=Path, help="raw results (default bench/results/enroll_<date>.json)")
    args = ap.parse_args()
    root = Path(args.data) / "lfw"
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-enroll-"))
    work.mkdir(parents=True, exist_ok=True)
    models = {"before (no alignment)": args.model_plain, "after (YuNet + alignment)": args.model_aligned}
    if None in models.values():
        manifest = train_manifest(root, work / "train.csv")
        models = {"before (no alignment)": args.model_plain or train_model(manifest, work / "m_none", "none"),
                  "after (YuNet + alignment)": args.model_aligned or train_model(manifest, work / "m_yunet", "yunet")}
    images = bench_images(root, args.images)
    for p in images["abs_path"]:  # warm the page cache: every run reads from memory
        Path(p).read_bytes()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    results = {}
    for name, mdir in models.items():
        runs = [end_to_end(mdir, images, work) for _ in range(args.runs)]
        wall = statistics.median(r[1] for r in runs)
        st = steps(mdir, images, work)
        results[name] = {"model": str(mdir), "open_s": [round(r[0], 3) for r in runs],
                         "wall_s": [round(r[1], 3) for r in runs], "median_open_s": round(statistics.median(
                             r[0] for r in runs), 3), "median_wall_s": round(wall, 3),
                         "images_per_s": round(len(images) / wall, 1), "enrolled": runs[0][2], "rejected": runs[0][3],
                         "steps_s": {k: round(v, 3) for k, v in st.items()}}
        print(name, json.dumps(results[name]), flush=True)
    aligned_model = list(models.values())[1]
    pool = align_workers(aligned_model, images)
    print("align_batch", pool, flush=True)
    when = datetime.now(UTC)
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    payload = {"date": when.isoformat(timespec="seconds"), "machine": machine(), "uptime_before": uptime,
               "command": cmd, "images": len(images), "runs": args.runs, "results": results,
               "align_batch_s": pool}
    out_json = args.json or REPO / "bench" / "results" / f"enroll_{when:%Y%m%d}.json"
    out_json.write_text(json.dumps(payload, indent=2) + "\n")
    if args.out:
        write_section(args.out, SECTION, render(payload))
    print(render(payload))


def render(p: dict) -> str:
    names = list(p["results"])
    step_names = ["hash", "decode", "detect", "align", "embed", "store"]
    lines = [SECTION, "",
             f"`{p['command']}` — {p['date']} UTC, {p['machine']}; load before the run: `{p['uptime_before']}`.",
             "", (f"{p['images']} LFW photos (250 px) of people neither model trained on, enrolled with "
             "`enroll_chunk` (ENROL mode, one chunk, one atomic commit) into a fresh store; small models "
             "(test_resnet, 48 px input, 32-d embedding, `train.minutes=0.3` on 160 LFW people; crop 1.0 of the aligned "
             "face / 0.64 of the photo; without `--model-*` the script trains them exactly so). Median of "
             f"{p['runs']} runs."), "",
             "| path | open gallery + load model, s | enrol wall s | images / s | enrolled | rejected (policy) |",
             "|---|---|---|---|---|---|"]
    for n in names:
        r = p["results"][n]
        lines.append(f"| {n} | {r['median_open_s']:.2f} | {r['median_wall_s']:.2f} | {r['images_per_s']:.0f} | "
                     f"{r['enrolled']} | {r['rejected']} |")
    lines += ["", "Steps timed one by one on one thread (ms per image; share of the sum of the steps):", "",
              "| step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in step_names:
        cells = []
        for n in names:
            st = p["results"][n]["steps_s"]
            if s in st:
                cells.append(f"{1000 * st[s] / p['images']:.2f} ms ({100 * st[s] / sum(st.values()):.0f} %)")
            else:
                cells.append("-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    tot = [sum(p["results"][n]["steps_s"].values()) for n in names]
    lines.append("| sum | " + " | ".join(f"{1000 * t / p['images']:.2f} ms" for t in tot) + " |")
    pool = p["align_batch_s"]
    lines += ["", "`FaceAligner.align_batch` (decode + detect + align) alone on these photos, best of 2: "
              + ", ".join(f"{k}: {v:.2f} s" for k, v in pool.items()) + "."]
    lines += ["", ("Images / s counts the enrol call only (the one-off open + model load is the column before). The "
              "end-to-end path decodes, detects and aligns on `FaceAligner.align_batch`'s thread pool (one worker "
              "per core) and embeds with torch's threads; compare its wall time with the one-thread sum. Raw "
              "numbers: `bench/results/enroll_<date>.json`.")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
