"""Speed of the SFace-shaped student's shapes, untrained (docs/training.md, "Session 8" and "Session 10").

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/inherit_shape_speed.py
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/inherit_shape_speed.py --embed --shapes 96x2,104x2,112x2 --rounds 3

Raw (default): torch on the machine's threads (2 here), batch of 64 random images, NCHW and channels-last input, the
median of 3 timed passes after one warm-up. ``--embed``: the product's embedding call instead
(`pipeline.model.embed.embed_array`: the BatchNorm-folded copy, its default batches, no flip TTA) on 512 random
faces, median of 5 passes; the shapes are interleaved ``--rounds`` times and each shape's median over the rounds is
reported. No decode, no preprocessing: `bench/bench_student.py` times a trained model against the teacher.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from pipeline.model.embed import embed_array
from pipeline.model.encoder import build_encoder

SHAPES = [(112, 1), (80, 1), (112, 2), (80, 2)]  # (input px, stem stride); (112, 1) is the teacher's shape


def images_per_s(encoder: torch.nn.Module, px: int, channels_last: bool) -> float:
    x = torch.randn(64, 3, px, px)
    if channels_last:
        encoder, x = encoder.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        encoder(x[:8])
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            encoder(x)
            times.append(time.perf_counter() - t0)
    return 64 / sorted(times)[1]


def embed_images_per_s(encoder: torch.nn.Module, px: int) -> float:
    """Images/s of the product's embedding call on 512 random faces (median of 5 passes after a warm-up)."""
    faces = np.random.default_rng(0).integers(0, 256, (512, px, px, 3), dtype=np.uint8)
    encoder = encoder.to(memory_format=torch.channels_last)
    embed_array(encoder, faces[:64], flip_tta=False)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        embed_array(encoder, faces, flip_tta=False)
        times.append(time.perf_counter() - t0)
    return len(faces) / statistics.median(times)


def build(px: int, stride: int) -> torch.nn.Module:
    return build_encoder("mobilenetv1_100", 128, head="flatten", input_px=px,
                         arch={"shape": "sface", "stem_stride": stride, "drop_blocks": []}).eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{px}x{s}" for px, s in SHAPES),
                    help="comma-separated PXxSTRIDE, e.g. 96x2,112x2")
    ap.add_argument("--embed", action="store_true", help="time the product's embedding call, not the raw network")
    ap.add_argument("--rounds", type=int, default=1, help="--embed: interleaved rounds over the shapes")
    args = ap.parse_args(argv)
    shapes = [(int(px), int(s)) for px, s in (item.split("x") for item in args.shapes.split(","))]
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads")
    if not args.embed:
        for px, stride in shapes:
            enc = build(px, stride)
            print(f"stride {stride}, {px} px: NCHW {images_per_s(enc, px, False):.0f}  "
                  f"channels-last {images_per_s(enc, px, True):.0f} images/s", flush=True)
        return
    encoders = {shape: build(*shape) for shape in shapes}
    runs: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
    for _ in range(args.rounds):
        for shape, enc in encoders.items():
            runs[shape].append(embed_images_per_s(enc, shape[0]))
    for (px, stride), values in runs.items():
        print(f"stride {stride}, {px} px, embedding path: {statistics.median(values):.0f} images/s "
              f"(rounds: {', '.join(f'{v:.0f}' for v in values)})", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
