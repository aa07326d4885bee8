"""Model artefacts: a directory with ``model.safetensors`` and ``model.json``. Never pickle.

``model_version`` is a content hash over what determines the embeddings: the weights' sha256, the
architecture (backbone, embedding size) and the preprocessing. Thresholds and metrics are NOT in
the hash: recalibrating a model does not make its embeddings incompatible with a gallery.
Loading re-hashes the weights and refuses a directory whose files disagree with model.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.core.env import resolve_device
from pipeline.core.errors import ConfigError, ModelArtifactError
from pipeline.core.io import atomic_path, file_digest, write_bytes_atomic
from pipeline.model.encoder import (
    INPUT_MEAN,
    INPUT_STD,
    Encoder,
    build_model,
    parse_backbone,
)

log = logging.getLogger(__name__)

FORMAT = "facepipe-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
REQUIRED_KEYS = ("format", "format_version", "model_version", "weights_sha256", "backbone", "embedding_dim",
                 "preprocessing", "thresholds", "default_threshold")


@dataclass(frozen=True)
class LoadedModel:
    """An encoder in eval mode with its metadata (``meta`` is model.json as a dict)."""

    encoder: Encoder
    meta: dict[str, Any]
    path: Path

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])

    @property
    def threshold(self) -> float:
        """The default decision threshold (cosine) calibrated at the default FAR."""
        return float(self.meta["default_threshold"])




def compute_model_version(weights_sha256: str, backbone: str, embedding_dim: int, preprocessing: dict[str, Any],
                          arch: dict[str, Any] | None = None) -> str:
    """Content hash naming the embedding space: ``m-`` + 16 hex digits (``arch``, when set, is part of it)."""
    fields: dict[str, Any] = {"w": weights_sha256, "b": backbone, "d": embedding_dim, "p": preprocessing}
    if arch:
        fields["a"] = arch
    ident = json.dumps(fields, sort_keys=True)
    return "m-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


def preprocessing_dict(crop_fraction: float, image_size_px: int, flip_tta: bool,
                       face: dict[str, Any] | None = None) -> dict[str, Any]:
    """model.json's ``preprocessing``: with ``face`` (detector, aligned_px, alignment version, template; see
    `pipeline.faces.loader.face_section`) photos are aligned first and the crop applies to the aligned face. All of
    it is part of ``model_version``, so a store refuses queries prepared another way."""
    out = {"crop_fraction": crop_fraction, "image_size_px": image_size_px, "mean": list(INPUT_MEAN),
           "std": list(INPUT_STD), "flip_tta": flip_tta, "color": "RGB"}
    if face is not None:
        out["face"] = face
    return out


def save_model(encoder: Encoder, out_dir: str | os.PathLike[str], *, backbone: str, head: str = "gap",
               preprocessing: dict[str, Any], thresholds: dict[str, float], default_far: float,
               metrics: dict[str, Any], config: dict[str, Any], training: dict[str, Any] | None = None,
               arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write weights (safetensors) then model.json (the commit point). Returns the metadata written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        weights_sha = file_digest(tmp)
    key = f"far={default_far:g}"
    if key not in thresholds:
        raise ModelArtifactError(f"no calibrated threshold for the default FAR {default_far:g}; have {sorted(thresholds)}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": compute_model_version(weights_sha, backbone, encoder.embedding_dim, preprocessing, arch),
        "weights_sha256": weights_sha,
        "backbone": backbone,
        "head": head,
        # an SFace-shaped student's changes to the timm backbone (pipeline/model/inherit.py), or None
        "arch": arch or None,
        "embedding_dim": encoder.embedding_dim,
        "preprocessing": preprocessing,
        "thresholds": thresholds,
        "default_far": default_far,
        "default_threshold": thresholds[key],
        "metrics": metrics,
        "config": config,
        "training": training or {},
        # the frozen model it was distilled from (name, version, files + sha256, licence), or None
        "teacher": (training or {}).get("teacher"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    write_bytes_atomic(out / META, json.dumps(meta, indent=2, sort_keys=True).encode())
    log.info("saved model %s to %s", meta["model_version"], out)
    return meta


def read_model_meta(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check model.json without loading weights (no torch work)."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelArtifactError(f"model directory {d} does not exist")
    meta_path = d / META
    if not meta_path.is_file():
        pickles = [p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" (found {pickles}: pickled weights are refused; export to safetensors)" if pickles else ""
        raise ModelArtifactError(f"{d} is not a facepipe model: no {META}{hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelArtifactError(f"{meta_path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelArtifactError(f"{meta_path}: missing key(s) {missing}")
    if meta["format"] != FORMAT or meta["format_version"] != FORMAT_VERSION:
        raise ModelArtifactError(f"{meta_path}: format {meta['format']!r} v{meta['format_version']} is not "
                                 f"{FORMAT!r} v{FORMAT_VERSION}")
    expected = compute_model_version(meta["weights_sha256"], meta["backbone"], meta["embedding_dim"], meta["preprocessing"],
                                     meta.get("arch"))
    if meta["model_version"] != expected:
        raise ModelArtifactError(f"{meta_path}: model_version {meta['model_version']} does not match its contents "
                                 f"(expected {expected}); the file was edited")
    return meta


def load_model(model_dir: str | os.PathLike[str], *, device: str = "cpu") -> LoadedModel:
    """Load and verify a model directory: JSON keys, weights hash, version hash, architecture. The encoder is put
    on ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``; see `pipeline.core.env.resolve_device`)."""
    d = Path(model_dir)
    meta = read_model_meta(d)
    weights = d / WEIGHTS
    if not weights.is_file():
        raise ModelArtifactError(f"{d}: {WEIGHTS} is missing")
    actual = file_digest(weights)
    if actual != meta["weights_sha256"]:
        raise ModelArtifactError(f"{weights}: sha256 {actual[:12]}... does not match model.json "
                                 f"({meta['weights_sha256'][:12]}...): weights were replaced or corrupted")
    head = str(meta.get("head", "gap"))  # models written before the flatten head have none: gap
    try:
        member_dim = int(meta["embedding_dim"]) // len(parse_backbone(meta["backbone"]))
        encoder = build_model(meta["backbone"], member_dim, head=head, input_px=int(meta["preprocessing"]["image_size_px"]),
                              arch=meta.get("arch"))
    except ConfigError as exc:
        raise ModelArtifactError(f"{d / META}: {exc}") from exc
    try:
        state = load_file(weights, device="cpu")
        encoder.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelArtifactError(f"{weights} does not fit backbone {meta['backbone']!r}: {exc}") from exc
    encoder.to(resolve_device(device)).eval()
    return LoadedModel(encoder=encoder, meta=meta, path=d)
