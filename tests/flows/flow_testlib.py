"""Shared settings and helpers of the flow tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# Tiny and single-threaded (the CI machine has 2 shared cores): models train in seconds.
TINY = ["model.backbone=test_resnet", "data.image_size_px=32", "model.embedding_dim=32", "data.val_fraction=0.2",
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
