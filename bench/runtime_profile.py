"""Probe: where the student's forward pass spends its time in OpenCV DNN, and whether int8 would buy speed.

Builds a student of the default family with SFace's weights (untrained: speed does not depend on the weights) at the
full shape and at ranks F (the default's factored shape, factored on random faces: only its speed is read here),
folds its BatchNorms and exports it as the product does (`pipeline.model.runtime`), then for each:
  * OpenCV DNN images/s at batches of 1, 32 and 128 (median of 5 rounds of 512 faces after a warm-up);
  * OpenCV's per-layer profile of one batch of 128, summed by kind (1x1 convolutions, depthwise, stem, head), with the
    1x1 convolutions' GFLOP/s (2 x multiply-adds / time): near the cores' FMA peak, the time is the arithmetic, not
    the runtime;
  * with ``--ort`` (a folder holding the `onnxruntime` package, e.g. ``pip install --target DIR --no-deps
    onnxruntime``; not a dependency of the product): ONNX Runtime fp32 and int8 (static QDQ, per-channel weights,
    calibrated on 64 random faces) images/s at batch 32, and the cosine between their embeddings.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/runtime_profile.py [--ort DIR] > bench/results/runtime_profile_sessionN.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline  # noqa: E402,F401  (runtime tuning)
from pipeline.core.config import load_config  # noqa: E402
from pipeline.model.encoder import build_encoder  # noqa: E402
from pipeline.model.fold import inference_copy  # noqa: E402
from pipeline.model.inherit import inherit_sface, model_arch  # noqa: E402
from pipeline.model.runtime import OpenCVRunner, export_onnx  # noqa: E402

PX = 112


def student(overrides: list[str]) -> bytes:
    """The default config's student (with ``overrides``), shaped as `train` builds it, exported for OpenCV."""
    arch = model_arch(load_config(None, overrides))
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=PX, arch=arch)
    calib = torch.randn(64, 3, PX, PX)
    inherit_sface(enc, calib=calib if "pw_ranks" in arch else None)
    enc.eval()
    return export_onnx(inference_copy(enc, calib[:4]), calib[:4])


def rate(run, bs: int, rounds: int = 5, n: int = 512) -> float:
    x = np.random.default_rng(bs).standard_normal((bs, 3, PX, PX)).astype(np.float32)
    run(x)
    out = []
    for _ in range(rounds):
        t0, done = time.perf_counter(), 0
        while done < n:
            run(x)
            done += bs
        out.append(done / (time.perf_counter() - t0))
    return round(statistics.median(out), 1)


def kind(name: str, layer_type: str) -> str:
    if layer_type != "Conv2":
        return "other" if layer_type != "Gemm" else "head"
    return "pointwise" if "conv_pw" in name else "depthwise" if "conv_dw" in name else "stem"


def profile(runner: OpenCVRunner, onnx: bytes) -> dict:
    import onnx as onnx_lib

    net = runner._net
    runner(np.zeros((128, 3, PX, PX), np.float32))
    _, times = net.getPerfProfile()
    ms: dict[str, float] = {}
    for name, t in zip(net.getLayerNames(), np.ravel(times)):
        k = kind(name, net.getLayer(name).type)
        ms[k] = ms.get(k, 0.0) + float(t) / cv2.getTickFrequency() * 1e3
    # multiply-adds of the 1x1 convolutions: C_in * C_out * output positions, from the exported graph's shapes
    model = onnx_lib.shape_inference.infer_shapes(onnx_lib.load_from_string(onnx))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if w and w[2:] == [1, 1] and node.output[0] in shapes:
            h, wd = shapes[node.output[0]][2:]
            macs += w[0] * w[1] * h * wd
    gflops = 2 * macs * 128 / (ms["pointwise"] / 1e3) / 1e9
    return {"ms_per_128_by_kind": {k: round(v, 1) for k, v in sorted(ms.items(), key=lambda kv: -kv[1])},
            "pointwise_mmacs_per_image": round(macs / 1e6, 1), "pointwise_gflops": round(gflops, 1)}


def ort_rows(onnx: bytes, ort_dir: str) -> dict:
    sys.path.insert(0, ort_dir)
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.random.default_rng(0).standard_normal((64, 3, PX, PX)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": calib[i:i + 16]} for i in range(0, 64, 16)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(onnx)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
        sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                    for k, p in (("fp32", src), ("int8", dst))}
        out = {f"ort_{k}_images_per_s": rate(lambda x, s=s: s.run(None, {"x": x}), 32) for k, s in sessions.items()}
        e = {k: s.run(None, {"x": calib[:16]})[0] for k, s in sessions.items()}
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (e["fp32"], e["int8"]))
    out["ort_int8_vs_fp32_cosine_min"] = round(float((a * b).sum(1).min()), 4)
    out["onnxruntime"] = ort.__version__
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ort", default="", metavar="DIR", help="a folder holding onnxruntime (optional)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    rows = []
    for name, overrides in (("full", ["model.pw_ranks="]), ("ranks F", [])):  # the default is ranks F
        onnx = student(overrides)
        runner = OpenCVRunner(onnx)
        row = {"shape": name, **{f"opencv_images_per_s_batch{bs}": rate(runner, bs) for bs in (1, 32, 128)},
               **profile(runner, onnx)}
        if args.ort:
            row.update(ort_rows(onnx, args.ort))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor() or
                      platform.machine(), "opencv": cv2.__version__, "load_after": open("/proc/loadavg").read().split()[:3],
                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
