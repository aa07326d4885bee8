"""Raw speed of the SFace-shaped student's shapes, untrained (docs/training.md, "Session 8").

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/inherit_shape_speed.py

torch on the machine's threads (2 here), batch of 64 random images, NCHW and channels-last input, the median of 3
timed passes after one warm-up. No decode, no preprocessing: `bench/bench_student.py` times the product's path.
"""

from __future__ import annotations

import os
import time

import torch

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


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads")
    for px, stride in SHAPES:
        enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=px,
                            arch={"shape": "sface", "stem_stride": stride, "drop_blocks": []}).eval()
        print(f"stride {stride}, {px} px: NCHW {images_per_s(enc, px, False):.0f}  "
              f"channels-last {images_per_s(enc, px, True):.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
