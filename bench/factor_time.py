"""Seconds that starting a student from SFace's weights takes, with and without factoring (``model.pw_ranks``).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/factor_time.py

`pipeline.model.inherit.inherit_sface` on a 112 px, stem-stride-2 student: full rank, then ranks M (11 layers
factored, session 15) and ranks F (7 layers, session 16) as the product factors them, on
`pipeline.train.loop.CALIB_FACES` calibration faces (random pixels: the cost does not depend on what they show).
torch on one thread per core; median of ``--runs``. Paid once per training run, before its budget's first step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline  # noqa: E402,F401  (runtime tuning)
from pipeline.core.env import set_threads  # noqa: E402
from pipeline.model.embed import to_input  # noqa: E402
from pipeline.model.encoder import build_encoder  # noqa: E402
from pipeline.model.inherit import inherit_sface  # noqa: E402
from pipeline.train.loop import CALIB_FACES  # noqa: E402

RANKS = {"ranks M": [0, 0, 32, 48, 64, 96, 80, 80, 80, 80, 80, 160, 160],
         "ranks F": [0, 0, 32, 0, 64, 0, 96, 96, 96, 96, 96, 0, 192]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    set_threads(len(os.sched_getaffinity(0)))
    calib = to_input(np.random.default_rng(0).integers(0, 256, (CALIB_FACES, 112, 112, 3), dtype=np.uint8))
    rows = {"full rank": ({}, None), **{name: ({"pw_ranks": r}, calib) for name, r in RANKS.items()}}
    out = {"load_before": os.getloadavg()}
    for name, (extra, faces) in rows.items():
        times = []
        for _ in range(args.runs):
            enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=112,
                                arch={"shape": "sface", "stem_stride": 2, "drop_blocks": [], **extra})
            t0 = time.perf_counter()
            inherit_sface(enc, calib=faces)
            times.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(times), 2)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
