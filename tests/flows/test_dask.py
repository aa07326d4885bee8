"""Scale-out: embedding and lookup chunks on a real 2-worker Dask cluster (prefect-dask's DaskTaskRunner)
give the same store and the same results as the single-process run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from flow_testlib import gallery_and_probes

from flows.enroll import enroll_flow
from flows.lookup import lookup_flow
from flows.settings import task_runner
from indexes import GalleryStore

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[tuple[str, object]]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield cluster.scheduler_address, client


def test_dask_runs_equal_the_single_process_run(dask_cluster: tuple[str, object], tiny_model: Path,
                                                 real_subset: Path, tmp_path: Path) -> None:
    from distributed import get_task_stream

    address, client = dask_cluster
    gallery, probes = gallery_and_probes(real_subset, 40)
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    probes[["image_path"]].to_csv(tmp_path / "probes.csv", index=False)
    on_dask = {"task_runner": task_runner(address)}

    local = enroll_flow(str(tmp_path / "gallery.csv"), str(tmp_path / "local"), str(tiny_model), chunk_size=8)
    with get_task_stream(client) as stream:
        dask = enroll_flow.with_options(**on_dask)(str(tmp_path / "gallery.csv"), str(tmp_path / "dask"),
                                                    str(tiny_model), chunk_size=8)
    assert local["enrolled"] == dask["enrolled"] == 40
    assert len({t["worker"] for t in stream.data}) == 2  # the 5 embedding chunks ran on both workers
    a, b = GalleryStore.open(tmp_path / "local"), GalleryStore.open(tmp_path / "dask")
    cols = ["row_id", "identity", "image_path", "image_sha256"]
    pd.testing.assert_frame_equal(a.metadata()[cols], b.metadata()[cols])
    np.testing.assert_allclose(a.get_embeddings(a.metadata()["row_id"]), b.get_embeddings(b.metadata()["row_id"]),
                               atol=1e-5)

    lookup_flow(str(tmp_path / "probes.csv"), str(tmp_path / "local.parquet"), "identify",
                index=str(tmp_path / "local"), top_k=3, chunk_size=32)
    lookup_flow.with_options(**on_dask)(str(tmp_path / "probes.csv"), str(tmp_path / "dask.parquet"), "identify",
                                        index=str(tmp_path / "local"), top_k=3, chunk_size=32)
    one, two = (pq.read_table(tmp_path / f"{n}.parquet").to_pandas() for n in ("local", "dask"))
    assert len(one) == len(two) == 3 * len(probes)
    np.testing.assert_allclose(one["score"], two["score"], atol=1e-5)
    # same rows in the same order, except that a probe whose top-3 scores tie within 1e-5 may order them
    # differently (the workers' torch runs 1 thread, the flow's process may use 2: the last bits can differ)
    tied = one.groupby("image_path")["score"].transform(lambda s: bool((s.diff().abs() < 1e-5).any())).astype(bool)
    assert tied.mean() < 0.1
    pd.testing.assert_frame_equal(one[~tied].drop(columns="score"), two[~tied].drop(columns="score"))
    assert (one["image_path"] == two["image_path"]).all()


def test_the_settings_dask_address_takes_effect_by_hand(dask_cluster: tuple[str, object], tiny_model: Path,
                                                        real_subset: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m flows.enroll --settings FILE`` runs its chunks on FILE's ``[dask] address``, FILE's chunk size."""
    from distributed import get_task_stream

    from flows import enroll

    address, client = dask_cluster
    monkeypatch.delenv("FACEPIPE_DASK_ADDRESS", raising=False)
    gallery, _ = gallery_and_probes(real_subset, 12)
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    settings = tmp_path / "flows.toml"
    settings.write_text(f'[chunks]\nenroll = 3\n[dask]\naddress = "{address}"\n')
    with get_task_stream(client) as stream:
        assert enroll.main(["--settings", str(settings), "--images", str(tmp_path / "gallery.csv"), "--index",
                            str(tmp_path / "store"), "--model", str(tiny_model)]) == 0
    assert len(GalleryStore.open(tmp_path / "store")) == 12
    embeds = [t for t in stream.data if str(t["key"]).startswith("embed_images-")]
    assert len(embeds) == 4 and len({t["worker"] for t in embeds}) == 2  # 12 images in chunks of 3, both workers
