"""Shared pieces of the teacher tests: a counting teacher registered as "counting", a picklable crops provider."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

from pipeline.model.teachers import Teacher
from pipeline.model.teachers.base import register_teacher


def _sha(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


class CountingTeacher(Teacher):
    """Embeds a crop as a fixed random projection of its pixel means; records every call in a file."""

    name = "counting"
    embedding_dim = 8
    licence = "CC0-1.0"

    def __init__(self, *, weights: str = "w1", calls_file: str | None = None) -> None:
        self.files = {"counting.bin": _sha(weights)}
        self._weights, self._calls_file = weights, calls_file
        self._proj = np.random.default_rng(len(weights)).normal(size=(3 * 16, 8)).astype(np.float32)

    def spec(self):
        return self.name, {"weights": self._weights, "calls_file": self._calls_file}

    def _embed_raw(self, crops):
        if self._calls_file:
            with open(self._calls_file, "a") as fh:
                fh.write(f"{os.getpid()} {len(crops)}\n")
        blocks = crops.reshape(len(crops), 4, 28, 4, 28, 3).mean(axis=(2, 4)).reshape(len(crops), -1)
        return blocks.astype(np.float32) @ self._proj + 1.0


register_teacher("counting", CountingTeacher)


def _crop_for(sha: str) -> np.ndarray:
    return np.random.default_rng(int(sha[:8], 16)).integers(0, 256, (112, 112, 3), dtype=np.uint8)


class Provider:
    """Picklable crops provider; counts the images it was asked for in a file."""

    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __call__(self, shas):
        with open(self.log, "a") as fh:
            fh.write("".join(s + "\n" for s in shas))
        return np.stack([_crop_for(s) for s in shas])


class _BadSpecTeacher(CountingTeacher):
    def spec(self):
        return "counting", {"nonsense": 1}


class _LockedError(ValueError):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()
