"""The CPU runtime of an encoder's forward pass: torch, or the same network exported to ONNX and run by OpenCV DNN.

OpenCV DNN (the runtime the SFace teacher already uses) runs the inherited MobileNet student at 112 px faster than
torch on two AVX2 cores: 357 against 203 aligned faces per second through `pipeline.model.embed.embed_array`, the
same batches of 32, embeddings equal within 4e-7 (`bench/bench_student.py`; docs/benchmarks.md, "Student vs
teacher").

Invariants:
- Faster, never different: the exported network is checked against the torch encoder on a probe batch; when any
  embedding differs by more than `TOLERANCE`, or the export or OpenCV's import fails (an op OpenCV does not know),
  torch is used and the reason logged once per weights.
- The export is a copy: the encoder is never changed (the exporter's train/eval switch runs on a wrapper whose
  mode is restored; the network exported is `pipeline.model.fold.inference_copy`'s folded copy).
- The cache follows the weights (`pipeline.model.fold.weights_key`), so a training step invalidates it.
- Small jobs stay in torch under ``auto``: the export costs 1.3 s (`bench/student_runtime_probe.py`,
  `bench/results/student_runtime_probe_session14_review.txt`), which OpenCV's ~2.1 ms saved per face pass (1/203 -
  1/357 s, docs/benchmarks.md) repays after about 600 passes; below `AUTO_MIN_PASSES` (2,048: a chunk of
  `iter_embed_table`) a job runs in torch, so a lookup of a few faces does not wait for an export. Weights already
  exported are reused for any job size.
- OpenCV runs on torch's thread count during the job (`cv_threads`): the face aligner leaves OpenCV on one thread.
- One OpenCV network is not safe to run from two threads at once: each forward holds the runner's lock.

``FACEPIPE_EMBED_RUNTIME`` = ``auto`` (default) | ``torch`` | ``opencv`` (OpenCV whenever it agrees with torch, any
job size). Accelerators (CUDA, MPS) always run torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from pipeline.core.errors import ConfigError
from pipeline.model.fold import weights_key

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "opencv")
ENV = "FACEPIPE_EMBED_RUNTIME"
TOLERANCE = 1e-4
AUTO_MIN_PASSES = 2048
OPSET = 13

_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, OpenCVRunner | None]] = weakref.WeakKeyDictionary()


def runtime_setting() -> str:
    """The runtime asked for in ``FACEPIPE_EMBED_RUNTIME`` (default ``auto``)."""
    name = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if name not in RUNTIMES:
        raise ConfigError(f"{ENV}={name!r} is not one of {list(RUNTIMES)}")
    return name


class _Embed(nn.Module):
    """The encoder's ``embed`` as a module's forward: what the ONNX exporter traces."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


class OpenCVRunner:
    """An encoder exported to ONNX, run by OpenCV DNN.

    ``runner(x)``: float32 (B, 3, H, W) normalised -> float32 (B, D). ``runner.embed_images``: uint8 faces straight
    to embeddings, normalised by OpenCV (`blob`), with flip TTA.
    """

    def __init__(self, onnx_bytes: bytes) -> None:
        import cv2

        self._net = cv2.dnn.readNetFromONNX(np.frombuffer(onnx_bytes, dtype=np.uint8))
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        blob = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        with self._lock:
            self._net.setInput(np.ascontiguousarray(blob, dtype=np.float32))
            out = self._net.forward()
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def embed_images(self, images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                     flip_tta: bool) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, D) unit embeddings; with ``flip_tta`` the mean of the image's and its
        mirror's, re-normalised (as `pipeline.model.embed.embed_array` does in torch)."""
        x = blob(images, mean, std)
        e = self(x)
        if flip_tta:
            e = torch.nn.functional.normalize(e + self(np.ascontiguousarray(x[..., ::-1])), dim=1)
        return e


def blob(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), ``(x / 255 - mean) / std`` (what `embed.to_input` computes), in
    OpenCV's C++ loop."""
    import cv2

    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = tuple(1.0 / (255.0 * s) for s in std)
    params.mean = tuple(255.0 * m for m in mean)
    params.swapRB = False
    params.ddepth = cv2.CV_32F
    return cv2.dnn.blobFromImagesWithParams(list(images), params)


@contextlib.contextmanager
def cv_threads(threads: int) -> Iterator[None]:
    """OpenCV's (process-wide) thread count set to ``threads`` inside the block, restored after. The face aligner sets
    OpenCV to one thread (it runs its own workers), which would leave the exported encoder on one core."""
    import cv2

    before = cv2.getNumThreads()
    if before != threads:
        cv2.setNumThreads(threads)
    try:
        yield
    finally:
        if before != threads:
            cv2.setNumThreads(before)


def export_onnx(net: nn.Module, example: torch.Tensor) -> bytes:
    """``net.embed`` as ONNX bytes with a free batch dimension (the TorchScript exporter, opset `OPSET`)."""
    modes = [(m, m.training) for m in net.modules()]  # the export switches them all; each is put back as it was
    wrapper = _Embed(net).eval()  # the exporter restores the wrapper's mode, and with it ``net``'s
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
            torch.onnx.export(wrapper, example.contiguous(), buf, input_names=["x"], output_names=["e"], dynamo=False,
                              opset_version=OPSET, dynamic_axes={"x": {0: "n"}, "e": {0: "n"}})
    finally:
        for m, training in modes:
            m.training = training
    return buf.getvalue()


def opencv_runner(encoder: nn.Module, net: nn.Module, probe: torch.Tensor) -> OpenCVRunner | None:
    """An OpenCV DNN runner for ``net`` (the encoder or its folded copy), checked against ``encoder.embed`` on
    ``probe`` (2+ normalised images); ``None`` when the export, the import or the check fails (logged once per
    weights). Cached on ``encoder`` while its weights are unchanged."""
    key = weights_key(encoder)
    hit = _cache.get(encoder)
    if hit is not None and hit[0] == key:
        return hit[1]
    runner: OpenCVRunner | None = None
    try:
        candidate = OpenCVRunner(export_onnx(net, probe))
        with torch.inference_mode():
            gap = (encoder.embed(probe).float() - candidate(probe)).abs().max().item()
        if gap <= TOLERANCE:
            runner = candidate
        else:
            log.warning("OpenCV DNN embeddings differ from torch's by %.2g (> %g); embedding with torch", gap, TOLERANCE)
    except Exception as exc:  # noqa: BLE001 - any exporter/importer failure means "use torch"
        log.info("the encoder cannot run in OpenCV DNN (%s: %s); embedding with torch",
                 type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    _cache[encoder] = (key, runner)
    return runner


def cached(encoder: nn.Module) -> bool:
    """Whether ``encoder``'s current weights were already tried for OpenCV (runner or refusal cached)."""
    hit = _cache.get(encoder)
    return hit is not None and hit[0] == weights_key(encoder)


def use_opencv(encoder: nn.Module, device: torch.device, passes: int, setting: str | None = None) -> bool:
    """Whether to try OpenCV for a job of ``passes`` face forward passes (images, twice with flip TTA)."""
    setting = setting or runtime_setting()
    if device.type != "cpu" or setting == "torch":
        return False
    return setting == "opencv" or passes >= AUTO_MIN_PASSES or cached(encoder)
