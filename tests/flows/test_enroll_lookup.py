"""The enrol and lookup flows on real faces under prefect_test_harness: idempotent enrolment with a rejects
table, and lookup results (through chunks and part files) equal to the library's own verify/identify."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from flow_testlib import gallery_and_probes, latest_artifacts

from flows.enroll import enroll_flow
from flows.lookup import lookup_flow
from pipeline.serve.gallery import identify_chunk, open_gallery, verify_chunk

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_enrol_is_idempotent_and_lookups_equal_the_library(tiny_model: Path, real_subset: Path,
                                                            tmp_path: Path) -> None:
    gallery, probes = gallery_and_probes(real_subset, 30)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with_bad = pd.concat([gallery, pd.DataFrame({"image_path": [str(bad)], "identity": ["X"]})])
    with_bad.to_csv(tmp_path / "gallery.csv", index=False)
    index = tmp_path / "store"

    first = enroll_flow(str(tmp_path / "gallery.csv"), str(index), str(tiny_model), chunk_size=8,
                        rejects_out=str(tmp_path / "rejects.parquet"))
    assert (first["enrolled"], first["rejected"], first["identities_added"]) == (30, 1, 30)
    rejects = pq.read_table(tmp_path / "rejects.parquet").to_pandas()
    assert rejects["image_path"].tolist() == [str(bad)]
    kinds = latest_artifacts("enroll-summary", "enroll-summary-counts", "enroll-summary-rejects")
    assert [kinds[k][0] for k in sorted(kinds)] == ["markdown", "table", "table"]

    second = enroll_flow(str(tmp_path / "gallery.csv"), str(index), str(tiny_model), chunk_size=8)
    assert (second["enrolled"], second["already_enrolled"], second["rejected"]) == (0, 30, 1)  # nothing re-embedded
    store, model = open_gallery(index)
    assert len(store) == 30 and set(store.metadata()["image_path"]) == set(gallery["image_path"])  # absolute paths

    probes = pd.concat([probes, pd.DataFrame({"image_path": [str(bad)], "identity": ["X"]})], ignore_index=True)
    probes[["image_path"]].to_csv(tmp_path / "probes.csv", index=False)
    res = lookup_flow(str(tmp_path / "probes.csv"), str(tmp_path / "hits.parquet"), "identify", index=str(index),
                      top_k=3, chunk_size=16, report=str(tmp_path / "review"))
    assert (res["probes"], res["rejected"]) == (len(probes) - 1, 1)
    page = Path(res["report"])  # the review page: every thumbnail it references exists
    shown = re.findall(r'src="([^"]+)"', page.read_text())
    assert page == tmp_path / "review" / "index.html" and len(shown) > len(probes)
    assert all((page.parent / src).is_file() for src in shown)
    assert latest_artifacts("lookup-review")["lookup-review"][0] == "markdown"
    hits = pq.read_table(tmp_path / "hits.parquet").to_pandas()
    table = probes.assign(abs_path=probes["image_path"], identity=None)
    lib = identify_chunk(store, model, table, top_k=3).results
    pd.testing.assert_frame_equal(hits, lib.reset_index(drop=True), check_dtype=False)
    assert pq.read_table(tmp_path / "hits.rejects.parquet").to_pandas()["image_path"].tolist() == [str(bad)]
    assert {k: t for k, (t, _) in latest_artifacts("lookup-identify", "lookup-identify-counts").items()} == {
        "lookup-identify": "markdown", "lookup-identify-counts": "table"}
    assert not list(tmp_path.glob(".hits.parquet.parts*"))  # this run's part files merged and removed

    claims = probes.rename(columns={"identity": "claimed_identity"})
    claims.loc[0, "claimed_identity"] = "Nobody_Enrolled"
    claims.to_csv(tmp_path / "claims.csv", index=False)
    lookup_flow(str(tmp_path / "claims.csv"), str(tmp_path / "claims.parquet"), "verify", index=str(index),
                chunk_size=16)
    got = pq.read_table(tmp_path / "claims.parquet").to_pandas()
    lib_claims = verify_chunk(store, model, claims.assign(abs_path=claims["image_path"])).results
    pd.testing.assert_frame_equal(got, lib_claims.reset_index(drop=True), check_dtype=False)
    assert not got["known"].iloc[0] and not got["match"].iloc[0]
