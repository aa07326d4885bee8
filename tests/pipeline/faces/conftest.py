"""Fixtures for the faces tests: one YuNet detector and aligner per session, LFW photos, synthetic sources."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # synth.py, whatever pytest's import mode

import synth

from pipeline.faces import AlignerConfig, FaceAligner, create_detector
from pipeline.faces.detect import FaceDetector


@pytest.fixture(scope="session")
def yunet() -> FaceDetector:
    return create_detector("yunet")


@pytest.fixture(scope="session")
def aligner(yunet: FaceDetector) -> FaceAligner:
    return FaceAligner(AlignerConfig(), detector=yunet)


@pytest.fixture(scope="session")
def lfw_sample(lfw_root: Path) -> list[Path]:
    """24 LFW photos spread over the whole set (every ~400th)."""
    paths = sorted(lfw_root.glob("*/*.jpg"))
    return paths[:: max(1, len(paths) // 24)][:24]


@pytest.fixture(scope="session")
def synth_sources(lfw_root: Path, yunet: FaceDetector) -> list[synth.SourceFace]:
    return synth.load_sources(synth.lfw_paths(lfw_root), yunet, 12, seed=7)
