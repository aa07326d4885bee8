"""Faces: detection with five landmarks (YuNet), similarity alignment to the ArcFace template, quality and policy.

Typical use::

    from pipeline.faces import FaceAligner, AlignerConfig
    aligner = FaceAligner(AlignerConfig(size_px=112))
    out = aligner.align_image(rgb)          # rgb: uint8 (H, W, 3)
    if out.accepted:
        crop = out.crop                     # uint8 (112, 112, 3) RGB
"""

from pipeline.faces.align import (
    ARCFACE_TEMPLATE_112,
    template_for_size,
    umeyama,
    warp_to_template,
)
from pipeline.faces.aligner import AlignerConfig, FaceAligner
from pipeline.faces.detect import (
    Detection,
    FaceDetector,
    YuNetDetector,
    available_detectors,
    create_detector,
    register_detector,
)
from pipeline.faces.outcome import FaceOutcome
from pipeline.faces.policy import FacePolicy, Mode
from pipeline.faces.weights import MODEL_FILES, model_path

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "MODEL_FILES",
    "AlignerConfig",
    "Detection",
    "FaceAligner",
    "FaceDetector",
    "FaceOutcome",
    "FacePolicy",
    "Mode",
    "YuNetDetector",
    "available_detectors",
    "create_detector",
    "model_path",
    "register_detector",
    "template_for_size",
    "umeyama",
    "warp_to_template",
]
