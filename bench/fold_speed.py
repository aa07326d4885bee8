"""What the embedding path's two CPU changes buy, in one run: BatchNorm folding and 32-face batches.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/fold_speed.py --model runs/i60r96 [--images 512] [--runs 5]

Rows (same random faces at the model's input size, no TTA, torch on the machine's threads): the path before
(the encoder as trained, batches of 256), the encoder with batches of 32, and the path now
(`pipeline.model.embed.embed_array`: BN-folded copy, batches of 32). The rows are interleaved run by run; median of
``--runs`` after one warm-up each. No decode, no alignment (both paths share them).
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402,F401  (runtime tuning)
from pipeline.core.env import set_threads  # noqa: E402
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import embed_array, to_input  # noqa: E402


def eager(encoder: torch.nn.Module, images: np.ndarray, batch: int) -> np.ndarray:
    """The embedding path before folding: the encoder itself, eval mode."""
    encoder.eval()
    with torch.inference_mode():
        return np.concatenate([encoder.embed(to_input(images[s:s + batch])).numpy()
                               for s in range(0, len(images), batch)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    set_threads(len(os.sched_getaffinity(0)))
    model = load_model(args.model)
    px = int(model.meta["preprocessing"]["image_size_px"])
    images = np.random.default_rng(0).integers(0, 256, (args.images, px, px, 3), dtype=np.uint8)
    rows = {
        "before: encoder, batches of 256": lambda: eager(model.encoder, images, 256),
        "encoder, batches of 32": lambda: eager(model.encoder, images, 32),
        "now: folded copy, batches of 32 (embed_array)": lambda: embed_array(model.encoder, images, flip_tta=False),
    }
    gap = float(np.abs(rows["before: encoder, batches of 256"]() - rows["now: folded copy, batches of 32 (embed_array)"]()).max())
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.runs):
        for name, fn in rows.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ips = {k: args.images / statistics.median(v) for k, v in times.items()}
    base = ips["before: encoder, batches of 256"]
    print(json.dumps({"model": model.model_version, "input_px": px, "images": args.images, "runs": args.runs,
                      "threads": torch.get_num_threads(), "max_abs_embedding_difference": gap,
                      "images_per_s": ips, "ratio_vs_before": {k: v / base for k, v in ips.items()},
                      "load_before": load_before, "load_after": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
