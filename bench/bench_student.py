"""Student vs teacher embedding throughput on the same cores, measured in one run.

    python bench/bench_student.py --model runs/distilled60 --data ../shared/data --images 512 --runs 3 \
        --out docs/benchmarks.md

Both embed the same aligned faces (YuNet + ArcFace template, taken from the aligned-crop cache or aligned once
before timing; alignment is not timed, since both need it): the student through `pipeline.model.embed.embed_array`
(its default batches: 32 faces on CPU; its model.json's input crop/size; with and without flip TTA; in torch and
exported to OpenCV DNN, `pipeline.model.runtime`),
the teacher through its adapter (`pipeline.model.teachers`, OpenCV DNN, batches of 16). Both run on the same
threads, one per core unless ``--threads`` (torch and OpenCV set after the aligner is built: building it puts OpenCV
on one thread, so before session 14 the teacher was timed on one thread against a student on all cores). Median of
``--runs``, the rows interleaved run by run, after one warm-up each. ``--out`` replaces the "## Student vs teacher"
section of a markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch
from docsection import write_section
from timing import interleaved as timed

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
from pipeline.model.runtime import AUTO_MIN_PASSES, ENV  # noqa: E402
from pipeline.model.teachers import create_teacher  # noqa: E402

SECTION = "## Student vs teacher"
RUNTIME_NAMES = {"torch": "torch", "opencv": "OpenCV DNN"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="folder with lfw/")
    ap.add_argument("--teacher", default="sface")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for both (torch and OpenCV); default: one per core")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    threads = args.threads or cores
    paths = sorted(str(p) for p in (args.data / "lfw").glob("*/*.jpg"))[: args.images]
    aligner = build_aligner("yunet", 112)
    faces = load_faces(paths, None, FacePreprocessing(1.0, 112, aligner,
                                                      cache=AlignedCropCache(cache_dir() / "aligned")))
    crops = faces.images
    model = load_model(args.model)
    pre = model.meta["preprocessing"]
    inputs = np.stack([center_crop_resize(c, float(pre["crop_fraction"]), int(pre["image_size_px"])) for c in crops])
    teacher = create_teacher(args.teacher)
    set_threads(threads)  # after the aligner, which leaves OpenCV on one thread (sessions 6-13 timed the teacher so)
    n = len(crops)
    load_before = os.getloadavg()

    def student(runtime: str, tta: bool):
        def run() -> np.ndarray:
            os.environ[ENV] = runtime
            return embed_array(model.encoder, inputs, flip_tta=tta)
        return run

    fns: dict[str, Callable[[], object]] = {"teacher": lambda: teacher.embed(crops)}
    for runtime in ("torch", "opencv"):
        for tta in (True, False):
            fns[f"student, {RUNTIME_NAMES[runtime]} ({'flip TTA' if tta else 'no TTA'})"] = student(runtime, tta)
    rows = timed(fns, args.runs)
    os.environ[ENV] = "torch"
    torch_emb = embed_array(model.encoder, inputs, flip_tta=False)
    os.environ[ENV] = "opencv"
    gap = float(np.abs(torch_emb - embed_array(model.encoder, inputs, flip_tta=False)).max())
    os.environ.pop(ENV)
    load_after = os.getloadavg()
    ips = {k: n / v for k, v in rows.items()}
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
              "cores": cores, "threads": threads, "images": n, "model": model.model_version, "backbone": model.meta["backbone"],
              "input_px": int(pre["image_size_px"]), "teacher": teacher.version, "images_per_s": ips,
              "ratio_vs_teacher": {k: v / ips["teacher"] for k, v in ips.items()},
              "load_before": load_before, "load_after": load_after, "max_abs_diff_torch_vs_opencv": gap,
              # the student's speed against the teacher's depends on the CPU and on both runtimes' threads
              "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
              "opencv_threads": cv2.getNumThreads()}
    print(json.dumps(result, indent=2))
    if args.out:
        cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                             text=True).stdout.strip()
        table = "\n".join(f"| {k} | {ips[k]:.0f} | {ips[k] / ips['teacher']:.1f}x |" for k in rows)
        section = (f"{SECTION}\n\nCommand: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_student.py --model "
                   f"{args.model} --data {args.data} --images {args.images} --runs {args.runs}"
                   f"{f' --threads {args.threads}' if args.threads else ''} --out {args.out}`\n\n"
                   f"{result['date']}, {cpu or result['machine']}, {cores} cores, {threads} thread(s) for both, {n} aligned LFW faces, median of "
                   f"{args.runs} runs after a warm-up, load average {load_before[0]:.2f} before / {load_after[0]:.2f} "
                   f"after. Student: {model.meta['backbone']} at {result['input_px']} px ({model.model_version}); "
                   f"teacher: {teacher.name} (OpenCV DNN, int8 ONNX, batches of 16). Alignment is not timed (both need "
                   f"it; see \"Enrolment path\"). The model embeds {'with' if pre['flip_tta'] else 'without'} flip TTA (its "
                   f"model.json). The student runs in torch or exported to OpenCV DNN (`pipeline.model.runtime`; the "
                   f"largest embedding difference between the two: {gap:.1g}); by default a job of {AUTO_MIN_PASSES:,}+ "
                   f"face passes, or any job once a model's export exists in the process, runs in OpenCV DNN.\n\n| embedder | images/s | vs teacher |\n|---|---|---|\n{table}\n")
        write_section(args.out, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
