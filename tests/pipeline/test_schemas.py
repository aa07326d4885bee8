"""Empty and non-empty result tables (enrol, identify, verify, rejects) have the same columns and dtypes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.config import Config, to_dict
from pipeline.core.errors import DataError
from pipeline.data import schemas
from pipeline.data.manifest import read_images
from pipeline.model.artifacts import preprocessing_dict, save_model
from pipeline.model.encoder import build_model
from pipeline.serve.gallery import enroll_chunk, identify_chunk, open_gallery, verify_chunk


@pytest.fixture()
def gallery(tmp_path: Path, synthetic_folders: Path):
    model_dir = tmp_path / "model"
    save_model(build_model("test_resnet", 16), model_dir, backbone="test_resnet",
               preprocessing=preprocessing_dict(1.0, 48, False), thresholds={"far=0.001": 0.5}, default_far=1e-3,
               metrics={}, config=to_dict(Config()))
    store, model = open_gallery(tmp_path / "g", model_dir, create=True)
    table = read_images(synthetic_folders, require_identities=True)
    enrolled = enroll_chunk(store, model, table.iloc[:6])
    return store, model, table, enrolled


def _signature(df: pd.DataFrame) -> list[tuple[str, str]]:
    return [(c, str(t)) for c, t in df.dtypes.items()]


def _broken(tmp_path: Path, table: pd.DataFrame) -> pd.DataFrame:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    return table.iloc[:1].assign(image_path="broken.png", abs_path=str(bad))


def test_identify_results_and_rejects_keep_their_schema_when_empty(gallery, tmp_path: Path) -> None:
    store, model, table, _ = gallery
    full = identify_chunk(store, model, table.iloc[6:9], top_k=2)
    empty = identify_chunk(store, model, _broken(tmp_path, table), top_k=2)
    assert len(full.results) == 6 and len(empty.results) == 0
    assert _signature(full.results) == _signature(empty.results) == list(schemas.IDENTIFY.items())
    assert len(full.rejects) == 0 and len(empty.rejects) == 1
    assert _signature(full.rejects) == _signature(empty.rejects) == list(schemas.REJECTS.items())


def test_verify_results_keep_their_schema_when_empty(gallery, tmp_path: Path) -> None:
    store, model, table, _ = gallery
    claims = table.iloc[6:9].assign(claimed_identity=str(table["identity"].iloc[0]))  # an enrolled identity
    full = verify_chunk(store, model, claims)
    empty = verify_chunk(store, model, _broken(tmp_path, claims))
    assert len(full.results) == 3 and len(empty.results) == 0
    assert _signature(full.results) == _signature(empty.results)
    assert _signature(full.results)[: len(schemas.VERIFY)] == list(schemas.VERIFY.items())
    assert full.results["known"].all()


def test_enrolment_results_keep_their_schema_when_nothing_is_added(gallery) -> None:
    store, model, table, first = gallery
    again = enroll_chunk(store, model, table.iloc[:6])  # every image is a duplicate now
    assert len(first.results) == 6 and len(again.results) == 0 and len(again.rejects) == 6
    assert _signature(first.results) == _signature(again.results) == list(schemas.ENROLLED.items())
    assert _signature(again.rejects) == list(schemas.REJECTS.items())


def test_conform_orders_casts_fills_and_keeps_extra_columns() -> None:
    df = pd.DataFrame({"extra": [1, 2], "score": [0.5, 0.25], "image_path": ["a", "b"]})
    out = schemas.conform(df, {"image_path": "string", "score": "float32", "known": "bool"})
    assert list(out.columns) == ["image_path", "score", "known", "extra"]
    assert [str(t) for t in out.dtypes] == ["string", "float32", "boolean", "int64"]
    assert out["known"].isna().all() and out["score"].tolist() == [0.5, 0.25]
    with pytest.raises(DataError, match="column 'score' cannot be stored as float32"):
        schemas.conform(pd.DataFrame({"score": ["high"]}), {"score": "float32"})
