"""The CLI end to end on real faces: train -> evaluate -> embed -> enroll -> identify/verify -> remove/info,
and the clear errors a user gets for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.data import schemas
from pipeline.data.manifest import read_images
from pipeline.model.artifacts import load_model
from pipeline.model.embed import embed_table

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def model_dir(real_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    rc = main(["train", "--data", str(real_subset), "--out", str(out), "--minutes", "0.3", "-q",
               "--set", "data.image_size_px=32", "--set", "model.embedding_dim=32", "--set", "data.val_fraction=0.2",
               "--set", "model.backbone=test_resnet", "--set", "data.face_detector=none", "--set", "distill.teacher=", "--set", "data.crop_fraction=0.64"])
    assert rc == 0
    return out


@pytest.fixture()
def people(real_subset: Path, tmp_path: Path) -> dict[str, Path]:
    """Gallery manifest (first image of 20 people), probes of the same people, and a corrupt image."""
    df = pd.read_csv(real_subset)
    first = df.groupby("identity").head(1).head(20)
    rest = df[df["identity"].isin(first["identity"]) & ~df.index.isin(first.index)].groupby("identity").head(1)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    gallery = pd.concat([first, pd.DataFrame({"image_path": [str(bad)], "identity": ["Broken_Person"]})])
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    probes = rest.rename(columns={"identity": "claimed_identity"})
    probes = probes.assign(ticket=[f"T{i}" for i in range(len(probes))])  # an extra column the user needs back
    missing = pd.DataFrame({"image_path": [str(tmp_path / "gone.jpg")], "claimed_identity": [first["identity"].iloc[0]],
                            "ticket": ["T-missing"]})
    pd.concat([probes, missing]).to_csv(tmp_path / "claims.csv", index=False)
    rest[["image_path"]].to_csv(tmp_path / "probes.csv", index=False)
    return {"gallery": tmp_path / "gallery.csv", "claims": tmp_path / "claims.csv", "probes": tmp_path / "probes.csv",
            "rest": rest}


def test_full_cli_round_trip(model_dir: Path, people: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    index = tmp_path / "gallery"
    rejects = tmp_path / "rejects.parquet"
    assert main(["enroll", "--model", str(model_dir), "--index", str(index), "--images", str(people["gallery"]),
                 "--rejects", str(rejects), "-q"]) == 0
    out = capsys.readouterr().out
    assert "enrolled 20 image(s) of 20 identities" in out
    rej = pq.read_table(rejects).to_pandas()
    assert len(rej) == 1 and rej["image_path"].iloc[0].endswith("corrupt.jpg")  # reported, the rest went in

    # enrolling the same images again stores nothing twice
    assert main(["enroll", "--index", str(index), "--images", str(people["gallery"]), "--rejects",
                 str(tmp_path / "r2.parquet"), "-q"]) == 0
    assert "enrolled 0 image(s)" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "r2.parquet").num_rows == 21  # 20 duplicates + the corrupt file

    assert main(["identify", "--index", str(index), "--probes", str(people["probes"]), "--top-k", "3",
                 "--out", str(tmp_path / "hits.parquet"), "-q"]) == 0
    hits = pq.read_table(tmp_path / "hits.parquet").to_pandas()
    assert {"image_path", "rank", "identity", "score", "decision"} <= set(hits.columns)
    assert len(hits) == 3 * len(people["rest"]) and hits["rank"].max() == 3
    top1 = hits[hits["rank"] == 1]
    assert ((top1["decision"] == top1["identity"]) | (top1["decision"] == "unknown")).all()

    # the claims' scores, computed apart from the CLI and the store: embed the claims and the gallery with the model,
    # cosine in numpy (one gallery image per identity, so the store's max over templates is that one cosine)
    model = load_model(model_dir)
    gal_rows, gal_emb, _ = embed_table(model, read_images(people["gallery"]))
    claim_rows, claim_emb, _ = embed_table(model, read_images(people["claims"]))
    template = dict(zip(gal_rows["identity"], gal_emb.astype(np.float64)))
    expected = {t: float(e @ template[c]) for t, c, e in
                zip(claim_rows["ticket"], claim_rows["claimed_identity"], claim_emb.astype(np.float64))}
    # a threshold in the widest gap between the middle scores: both outcomes, none within float noise of it
    ranked = np.sort(list(expected.values()))
    i = len(ranked) // 4 + int(np.argmax(np.diff(ranked[len(ranked) // 4: len(ranked) - len(ranked) // 4])))
    threshold = float((ranked[i] + ranked[i + 1]) / 2)
    assert ranked[i + 1] - ranked[i] > 1e-4

    def verify(t: float, out: Path) -> pd.DataFrame:
        assert main(["verify", "--index", str(index), "--probes", str(people["claims"]), "--out", str(out),
                     "--threshold", repr(t), "-q"]) == 0
        return pq.read_table(out).to_pandas()

    claims = verify(threshold, tmp_path / "claims.parquet")
    assert {"image_path", "claimed_identity", "score", "threshold", "match", "model_version"} <= set(claims.columns)
    # the extra column comes back row for row; the row whose file does not exist is a reject, the rest went through
    assert len(claims) == len(people["rest"]) and sorted(claims["ticket"]) == sorted(expected)
    np.testing.assert_allclose(claims["score"], claims["ticket"].map(expected), rtol=0, atol=1e-5)
    assert claims["known"].all() and (claims["threshold"] == threshold).all()
    assert claims["match"].tolist() == (claims["score"] >= threshold).tolist()
    assert 0 < claims["match"].sum() < len(claims)  # both outcomes occur
    # at a threshold equal to an observed score, that claim matches (score >= threshold, not >)
    at = claims.iloc[int(np.argsort(claims["score"].to_numpy())[len(claims) // 2])]
    again = verify(float(at["score"]), tmp_path / "claims_at.parquet").set_index("ticket")
    assert again.loc[at["ticket"], "score"] == at["score"] and bool(again.loc[at["ticket"], "match"])
    assert again["match"].tolist() == (again["score"] >= float(at["score"])).tolist()
    claim_rejects = pq.read_table(tmp_path / "claims.rejects.parquet").to_pandas()
    assert claim_rejects["image_path"].str.endswith("gone.jpg").tolist() == [True]
    assert "No such file" in claim_rejects["error"].iloc[0]

    assert main(["embed", "--model", str(model_dir), "--images", str(people["probes"]),
                 "--out", str(tmp_path / "emb.parquet"), "-q"]) == 0
    emb = pq.read_table(tmp_path / "emb.parquet")
    assert emb.schema.field("embedding").type.list_size == 32
    assert emb.column_names == ["image_path", "identity", "embedding", "model_version", *schemas.FACE]
    assert emb.column("faces_found").null_count == len(emb)  # a central-crop model measures no face

    name = people["rest"]["identity"].iloc[0]
    assert main(["remove", "--index", str(index), "--identity", name]) == 0
    assert main(["remove", "--index", str(index), "--identity", name]) == 1  # already gone
    capsys.readouterr()
    assert main(["info", str(index), "--json", "--check"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 19


def test_evaluate_writes_metrics_and_plots(model_dir: Path, lfw_root: Path, pairs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval" / "metrics.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(lfw_root), "--pairs", str(pairs_file),
                 "--folds", "7", "--out", str(out), "-q"]) == 0
    m = json.loads(out.read_text())
    assert m["pairs"]["pairs"] == 600 and 0.5 < m["pairs"]["auc"] <= 1.0
    assert (tmp_path / "eval" / "metrics_roc.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "metrics_scores.png").stat().st_size > 1000


def test_errors_are_clear(model_dir: Path, tmp_path: Path, synthetic_folders: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 2
    assert "no images found" in capsys.readouterr().err

    # a store made with one model refuses another model's queries, saying what to do
    other = tmp_path / "other_model"
    shutil.copytree(model_dir, other)
    index = tmp_path / "g"
    assert main(["enroll", "--model", str(model_dir), "--index", str(index), "--images", str(synthetic_folders),
                 "--rejects", str(tmp_path / "r.parquet"), "-q"]) == 0
    retrained = tmp_path / "retrained"
    assert main(["train", "--data", str(synthetic_folders), "--out", str(retrained), "--minutes", "0.05", "-q",
                 "--set", "data.image_size_px=32", "--set", "model.embedding_dim=32", "--set", "data.val_fraction=0.4",
                 "--set", "train.identities_per_batch=2", "--set", "model.backbone=test_resnet",
                 "--set", "data.face_detector=none", "--set", "distill.teacher=", "--set", "data.crop_fraction=0.64"]) == 0
    capsys.readouterr()
    assert main(["identify", "--index", str(index), "--model", str(retrained), "--probes", str(synthetic_folders),
                 "--out", str(tmp_path / "h.parquet")]) == 2
    err = capsys.readouterr().err
    assert "model" in err and "re-embed" in err
