"""Probe: the student's forward pass in torch (BatchNorm-folded, as `embed_array` runs it) against the same network
exported to ONNX and run by OpenCV DNN (the teacher's runtime), on 512 random faces at the model's size, batches
of 32, median of 5 rounds after a warm-up. Prints the largest difference between the torch and OpenCV embeddings
first: a faster runtime only counts if that is ~1e-5.

Session 13 found a 0.51 difference here and blamed OpenCV; it was this script: a fresh wrapper module is in train
mode, and `torch.onnx.export` restores the wrapper's mode after exporting, which put the folded network in train
mode (BatchNorm on batch statistics) for the torch side. The probe now exports with the product's
`pipeline.model.runtime.export_onnx` (which restores every module's own mode, tested) and prints the export's
seconds (the cost `runtime.AUTO_MIN_PASSES` is set against).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/student_runtime_probe.py runs/i60v8
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pipeline  # noqa: E402,F401  (runtime tuning)
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import CPU_BATCH, to_input  # noqa: E402
from pipeline.model.fold import inference_copy  # noqa: E402
from pipeline.model.runtime import OpenCVRunner, export_onnx  # noqa: E402

N = 512


def main(model_dir: str) -> None:
    model = load_model(Path(model_dir))
    px = int(model.meta["preprocessing"]["image_size_px"])
    x = to_input(np.random.default_rng(0).integers(0, 255, (N, px, px, 3), dtype=np.uint8))
    net = inference_copy(model.encoder.eval(), x[:4])
    batches = [x[s : s + CPU_BATCH] for s in range(0, N, CPU_BATCH)]
    t0 = time.perf_counter()
    onnx_bytes = export_onnx(net, batches[0])
    print("export s", round(time.perf_counter() - t0, 2))
    dnn = OpenCVRunner(onnx_bytes)
    with torch.inference_mode():
        print("max |torch - dnn|", float((net.embed(batches[0]) - dnn(batches[0])).abs().max()))
        rows = {"torch (BN-folded)": net.embed, "opencv dnn": dnn}
        rates: dict[str, list[float]] = {k: [] for k in rows}
        for f in rows.values():  # warm-up
            [f(b) for b in batches]
        for _ in range(5):
            for k, f in rows.items():
                t = time.perf_counter()
                [f(b) for b in batches]
                rates[k].append(N / (time.perf_counter() - t))
    print(json.dumps({k: round(statistics.median(v), 1) for k, v in rates.items()}, indent=1), os.getloadavg())


if __name__ == "__main__":
    main(sys.argv[1])
