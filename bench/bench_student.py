"""Student vs teacher embedding throughput on the same cores, measured in one run.

    python bench/bench_student.py --model runs/distilled60 --data ../shared/data --images 512 --runs 3 \
        --out docs/benchmarks.md

Both embed the same aligned faces (YuNet + ArcFace template, taken from the aligned-crop cache or aligned once
before timing; alignment is not timed, since both need it): the student through `pipeline.model.embed.embed_array`
(torch, its default batches: 32 faces on CPU; its model.json's input crop/size and flip TTA; also without TTA),
the teacher through its adapter (`pipeline.model.teachers`, OpenCV DNN, batches of 16). Both use the machine's threads (torch and OpenCV
set to the core count). Median of ``--runs`` after one warm-up. ``--out`` replaces the "## Student vs teacher"
section of a markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from docsection import write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402,F401  (runtime tuning)
from pipeline.core.config import cache_dir  # noqa: E402
from pipeline.core.env import set_threads  # noqa: E402
from pipeline.data.images import center_crop_resize  # noqa: E402
from pipeline.faces.crop_cache import AlignedCropCache  # noqa: E402
from pipeline.faces.loader import FacePreprocessing, build_aligner, load_faces  # noqa: E402
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import embed_array  # noqa: E402
from pipeline.model.teachers import create_teacher  # noqa: E402

SECTION = "## Student vs teacher"


def timed(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="folder with lfw/")
    ap.add_argument("--teacher", default="sface")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    set_threads(cores)
    paths = sorted(str(p) for p in (args.data / "lfw").glob("*/*.jpg"))[: args.images]
    aligner = build_aligner("yunet", 112)
    faces = load_faces(paths, None, FacePreprocessing(1.0, 112, aligner,
                                                      cache=AlignedCropCache(cache_dir() / "aligned")))
    crops = faces.images
    model = load_model(args.model)
    pre = model.meta["preprocessing"]
    inputs = np.stack([center_crop_resize(c, float(pre["crop_fraction"]), int(pre["image_size_px"])) for c in crops])
    teacher = create_teacher(args.teacher)
    n = len(crops)
    load_before = os.getloadavg()
    rows = {
        "teacher": timed(lambda: teacher.embed(crops), args.runs),
        "student (flip TTA)": timed(lambda: embed_array(model.encoder, inputs, flip_tta=True), args.runs),
        "student (no TTA)": timed(lambda: embed_array(model.encoder, inputs, flip_tta=False), args.runs),
    }
    load_after = os.getloadavg()
    ips = {k: n / v for k, v in rows.items()}
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
              "cores": cores, "images": n, "model": model.model_version, "backbone": model.meta["backbone"],
              "input_px": int(pre["image_size_px"]), "teacher": teacher.version, "images_per_s": ips,
              "ratio_vs_teacher": {k: v / ips["teacher"] for k, v in ips.items()},
              "load_before": load_before, "load_after": load_after,
              # the student's speed against the teacher's depends on it (5.6x on one machine, 3.5x on an AVX2 one)
              "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    if args.out:
        cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                             text=True).stdout.strip()
        table = "\n".join(f"| {k} | {ips[k]:.0f} | {ips[k] / ips['teacher']:.1f}x |" for k in rows)
        section = (f"{SECTION}\n\nCommand: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_student.py --model "
                   f"{args.model} --data {args.data} --images {args.images} --runs {args.runs} --out {args.out}`\n\n"
                   f"{result['date']}, {cpu or result['machine']}, {cores} cores, {n} aligned LFW faces, median of "
                   f"{args.runs} runs after a warm-up, load average {load_before[0]:.2f} before / {load_after[0]:.2f} "
                   f"after. Student: {model.meta['backbone']} at {result['input_px']} px ({model.model_version}); "
                   f"teacher: {teacher.name} (OpenCV DNN, int8 ONNX, batches of 16). Alignment is not timed (both need "
                   f"it; see \"Enrolment path\"). The model embeds {'with' if pre['flip_tta'] else 'without'} flip TTA (its "
                   f"model.json): that row is what enrolment and queries run at.\n\n| embedder | images/s | vs teacher |\n|---|---|---|\n{table}\n")
        write_section(args.out, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
