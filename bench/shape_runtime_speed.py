"""Images/s of SFace-shaped students in OpenCV DNN against the teacher, untrained shapes with the teacher's weights.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/shape_runtime_speed.py \
        --shapes 112,96,112:6-8-10,112:6-7-8-10,112:6-7-8-9-10,96:6-8,104:6-7-8-10

Each shape (``PX[:BLOCKS]``: input px, stem at stride 2, the 512-wide blocks left out joined by ``-``) is built with
SFace's inherited weights (`pipeline.model.inherit`; random weights run slower in OpenCV, so they would mislead),
BatchNorm-folded and exported the product's way (`pipeline.model.runtime`), then timed on 512 random normalised
faces in batches of 32. The teacher is its adapter (`pipeline.model.teachers`, OpenCV DNN, batches of 16) on 512
random 112 px crops. torch and OpenCV get one thread per core (``--threads``). Rows interleaved, median of
``--rounds``. No decode or preprocessing: `bench/bench_student.py` times trained models the product's way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline  # noqa: E402,F401  (runtime tuning)
from timing import interleaved  # noqa: E402
from pipeline.core.env import set_threads  # noqa: E402
from pipeline.model.embed import to_input  # noqa: E402
from pipeline.model.encoder import build_encoder  # noqa: E402
from pipeline.model.fold import inference_copy  # noqa: E402
from pipeline.model.inherit import inherit_sface  # noqa: E402
from pipeline.model.runtime import OpenCVRunner, export_onnx  # noqa: E402
from pipeline.model.teachers import create_teacher  # noqa: E402

N, BATCH = 512, 32


def parse_shape(text: str) -> tuple[int, tuple[int, ...]]:
    px, _, blocks = text.partition(":")
    return int(px), tuple(int(b) for b in blocks.split("-") if b)


def student(px: int, drop: tuple[int, ...]):
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=px,
                        arch={"shape": "sface", "stem_stride": 2, "drop_blocks": list(drop)}).eval()
    inherit_sface(enc, drop_blocks=drop)
    x = to_input(np.random.default_rng(0).integers(0, 256, (N, px, px, 3), dtype=np.uint8)).contiguous()
    runner = OpenCVRunner(export_onnx(inference_copy(enc, x[:4]), x[:4]))
    return lambda: [runner(x[s : s + BATCH]) for s in range(0, N, BATCH)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="112,96,112:6-7-8-10,112:6-7-8-9-10")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="default: one per core")
    args = ap.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    set_threads(threads)
    teacher = create_teacher("sface")
    crops = np.random.default_rng(0).integers(0, 256, (N, 112, 112, 3), dtype=np.uint8)
    rows = {"teacher (SFace adapter)": lambda: teacher.embed(crops)}
    for text in args.shapes.split(","):
        px, drop = parse_shape(text)
        rows[f"{px} px, blocks left out {list(drop)}"] = student(px, drop)
    load_before = os.getloadavg()
    med = {k: N / t for k, t in interleaved(rows, args.rounds).items()}
    teacher_rate = med["teacher (SFace adapter)"]
    print(json.dumps({"threads": threads, "load_before": load_before, "load_after": os.getloadavg(),
                      "images_per_s": {k: round(v, 1) for k, v in med.items()},
                      "vs_teacher": {k: round(v / teacher_rate, 2) for k, v in med.items()}}, indent=1))


if __name__ == "__main__":
    main()
