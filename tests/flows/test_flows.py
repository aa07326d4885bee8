"""Flows on real faces under prefect_test_harness: their results equal the library's own."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.enroll import enroll_flow
from flows.lookup import lookup_flow
from flows.retrain import retrain_flow
from pipeline.gallery import identify_chunk, open_gallery, verify_chunk

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(real_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flows") / "model"
    res = retrain_flow(str(real_subset), str(out), overrides=["train.minutes=0.25", "data.image_size_px=32",
                                                              "model.embedding_dim=32", "data.val_fraction=0.2"])
    assert res["model_version"].startswith("m-") and 0.0 < res["val_auc"] <= 1.0
    return out


def test_enroll_is_idempotent_and_lookup_matches_library(trained: Path, real_subset: Path, tmp_path: Path) -> None:
    df = pd.read_csv(real_subset)
    gallery = df.groupby("identity").head(1).head(30)
    probes = df[df["identity"].isin(gallery["identity"]) & ~df.index.isin(gallery.index)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    gallery = pd.concat([gallery, pd.DataFrame({"image_path": [str(bad)], "identity": ["X"]})])
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    index = tmp_path / "store"

    first = enroll_flow(str(tmp_path / "gallery.csv"), str(index), str(trained), chunk_size=8)
    assert first["enrolled"] == 30 and first["rejected"] == 1
    second = enroll_flow(str(tmp_path / "gallery.csv"), str(index), str(trained), chunk_size=8)
    assert second["enrolled"] == 0  # idempotent: same images are not stored twice
    store, model = open_gallery(index)
    assert len(store) == 30

    probes[["image_path"]].to_csv(tmp_path / "probes.csv", index=False)
    res = lookup_flow(str(tmp_path / "probes.csv"), str(index), str(tmp_path / "hits.parquet"), "identify",
                      top_k=3, chunk_size=16)
    flow_hits = pq.read_table(tmp_path / "hits.parquet").to_pandas()
    table = pd.DataFrame({"image_path": probes["image_path"].tolist(), "abs_path": probes["image_path"].tolist(),
                          "identity": None})
    lib = identify_chunk(store, model, table, top_k=3).results
    pd.testing.assert_frame_equal(flow_hits.reset_index(drop=True), lib.reset_index(drop=True), check_dtype=False)
    assert res["probes"] == len(probes)

    claims = probes.rename(columns={"identity": "claimed_identity"})
    claims.to_csv(tmp_path / "claims.csv", index=False)
    lookup_flow(str(tmp_path / "claims.csv"), str(index), str(tmp_path / "claims.parquet"), "verify", chunk_size=16)
    flow_claims = pq.read_table(tmp_path / "claims.parquet").to_pandas()
    lib_table = claims.assign(abs_path=claims["image_path"])
    lib_claims = verify_chunk(store, model, lib_table).results
    assert flow_claims["score"].round(5).tolist() == lib_claims["score"].round(5).tolist()
    assert flow_claims["match"].tolist() == lib_claims["match"].tolist()
