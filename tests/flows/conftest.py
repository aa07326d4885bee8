"""One Prefect test harness (temporary local server) for all flow tests, and tiny real-face models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flow_testlib import UNTRAINED
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def tiny_model(real_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained, 0-step) model artefact: flows must equal the library whatever the model's quality."""
    from pipeline.core.config import load_config
    from pipeline.train.loop import train
    from pipeline.train.prepare import prepare_training

    cfg = load_config(None, UNTRAINED)
    out = tmp_path_factory.mktemp("tiny") / "model"
    train(cfg, prepare_training(real_subset, None, cfg), out)
    return out
