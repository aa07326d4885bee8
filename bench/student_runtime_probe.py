"""Probe (session 13, not a product path): the student's forward pass in torch (BatchNorm-folded, as `embed_array`
runs it) against the same network exported to ONNX and run by OpenCV DNN (and onnxruntime when installed), on 512
random faces at the model's size, batches of 32, median of 5 rounds after a warm-up. Prints the largest difference
between the torch and OpenCV embeddings first: a faster runtime only counts if that is ~1e-5.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/student_runtime_probe.py runs/i60v8
"""
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import pipeline  # noqa: E402,F401  (runtime tuning)
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import to_input  # noqa: E402
from pipeline.model.fold import inference_copy  # noqa: E402

model = load_model(Path(sys.argv[1]))
enc = model.encoder.eval()
px = int(model.meta["preprocessing"]["image_size_px"]) if "preprocessing" in model.meta else 112
imgs = np.random.default_rng(0).integers(0, 255, (512, px, px, 3), dtype=np.uint8)
x = to_input(imgs)
net = inference_copy(enc, x[:4])

class E(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return self.n.embed(x)

onnx_path = str(Path(tempfile.mkdtemp()) / "student.onnx")
torch.onnx.export(E(net), x[:32], onnx_path, input_names=["x"], output_names=["e"], dynamo=False, opset_version=13)
dnn = cv2.dnn.readNetFromONNX(onnx_path)
cv2.setNumThreads(2)

def t_torch():
    with torch.inference_mode():
        for s in range(0, 512, 32): net.embed(x[s:s+32])
def t_dnn():
    for s in range(0, 512, 32):
        dnn.setInput(x[s:s+32].numpy()); dnn.forward()
rows = {"torch (BN-folded)": t_torch, "opencv dnn": t_dnn}
try:
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    def t_ort():
        for s in range(0, 512, 32): sess.run(None, {"x": x[s:s+32].numpy()})
    rows["onnxruntime"] = t_ort
except ImportError:
    pass
with torch.inference_mode():
    ref = net.embed(x[:32]).numpy()
dnn.setInput(x[:32].numpy()); d = dnn.forward()
print("max |torch - dnn|", float(np.abs(ref - d).max()))
res = {k: [] for k in rows}
for f in rows.values(): f()
for _ in range(5):
    for k, f in rows.items():
        t = time.perf_counter(); f(); res[k].append(512 / (time.perf_counter() - t))
print(json.dumps({k: round(statistics.median(v), 1) for k, v in res.items()}, indent=1), os.getloadavg())
