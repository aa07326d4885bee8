"""Lookup part files are private to a run (issue: a part left by an interrupted lookup failed the next one):
leftovers of a dead run are removed, a live run's folder is left alone, and a retried merge is a no-op."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from flow_testlib import gallery_and_probes

from flows.enroll import enroll_flow
from flows.lookup import lookup_flow
from flows.tasks import STALE_PARTS_S, merge_parts, parts_folder
from pipeline.data import schemas

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_leftover_parts_never_reach_a_new_lookup(tiny_model: Path, real_subset: Path, tmp_path: Path) -> None:
    gallery, probes = gallery_and_probes(real_subset, 12)
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    enroll_flow(str(tmp_path / "gallery.csv"), str(tmp_path / "store"), str(tiny_model), chunk_size=8)
    probes[["image_path"]].to_csv(tmp_path / "probes.csv", index=False)
    # a crashed run left a (truncated) part in the old shared folder name and in a run folder of its own
    dead = tmp_path / ".hits.parquet.parts-deadrun"
    dead.mkdir()
    (dead / "part-000000.parquet").write_bytes(b"PAR1 truncated")
    old = time.time() - STALE_PARTS_S - 60
    os.utime(dead, (old, old))
    live = tmp_path / ".hits.parquet.parts-liverun"  # another lookup to the same output, still running
    live.mkdir()
    (live / "part-000000.parquet").write_bytes(b"in progress")
    res = lookup_flow(str(tmp_path / "probes.csv"), str(tmp_path / "hits.parquet"), "identify",
                      index=str(tmp_path / "store"), top_k=2, chunk_size=4)
    hits = pq.read_table(tmp_path / "hits.parquet").to_pandas()
    assert res["probes"] == len(probes) and len(hits) == 2 * len(probes)
    assert not dead.exists() and (live / "part-000000.parquet").read_bytes() == b"in progress"
    assert sorted(p.name for p in tmp_path.glob(".hits.parquet.parts*")) == [live.name]


def test_a_retried_merge_after_the_parts_were_deleted_is_a_no_op(tmp_path: Path) -> None:
    folder = parts_folder(str(tmp_path / "out.parquet"), "run1")
    folder.mkdir()
    part = folder / "part-000000.parquet"
    rows = schemas.conform(pd.DataFrame({"image_path": ["a.jpg"], "rank": [1], "identity": ["A"], "score": [0.9],
                                         "decision": ["A"], "model_version": ["m-1"]}), schemas.IDENTIFY)
    rows.to_parquet(part)
    merge = merge_parts.fn
    assert merge([str(part)], str(tmp_path / "out.parquet"), "identify", str(folder)) == str(tmp_path / "out.parquet")
    assert not folder.exists()
    merge([str(part)], str(tmp_path / "out.parquet"), "identify", str(folder))  # the retry: nothing to re-read
    assert pd.read_parquet(tmp_path / "out.parquet")["identity"].tolist() == ["A"]
    empty = merge([], str(tmp_path / "none.parquet"), "verify", str(tmp_path / ".none.parts-x"))
    assert list(pd.read_parquet(empty).columns) == list(schemas.VERIFY)
