"""Shared settings and helpers of the flow tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

# Tiny and single-threaded (the CI machine has 2 shared cores): models train in seconds.
# No alignment, no teacher: the flow tests check orchestration, not the recipe (tests/pipeline covers those).
TINY = ["data.face_detector=none", "distill.teacher=", "data.crop_fraction=0.64", "model.backbone=test_resnet",
        "data.image_size_px=32", "model.embedding_dim=32", "data.val_fraction=0.2",
        "train.threads=1"]
UNTRAINED = [*TINY, "train.minutes=0.0001"]  # the budget is over before the first step: 0 steps


def gallery_and_probes(real_subset: Path, people: int, offset: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """First image of ``people`` identities (gallery) and their other images (probes), from the real subset."""
    df = pd.read_csv(real_subset)
    names = sorted(df["identity"].unique())[offset: offset + people]
    rows = df[df["identity"].isin(names)]
    gallery = rows.groupby("identity").head(1)
    return gallery.reset_index(drop=True), rows.drop(gallery.index).reset_index(drop=True)


def latest_artifacts(*keys: str) -> dict[str, tuple[str, str]]:
    """The latest artifact of each key: key -> (type, data), read from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    return {a.key: (a.type, str(a.data)) for a in found}


def last_flow_run(flow_name: str) -> Any:
    """The latest run of ``flow_name`` from the Prefect API (its ``parameters`` are the values the run used)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    return runs[0]


def task_run_count(flow_run_id: Any, task_name: str, expected: int, timeout_s: float = 15) -> int:
    """How many runs of ``task_name`` the flow run made (task runs reach the API asynchronously: waits up to
    ``timeout_s`` for ``expected``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        found = sum(r.name.startswith(f"{task_name}-") for r in runs)
        if found >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)
