"""The demo's one-shot protocol (`pipeline.demo.one_shot`, also `bench/one_shot.py`) on embeddings whose answers
are known: who is enrolled, what rank-1 / rank-5 / open-set / 1:1 numbers come out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.demo import one_shot


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_one_shot_enrols_one_photo_per_person_and_scores_the_rest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    people = ["a", "a", "a", "b", "b", "c", "c", "d", "e"]  # d, e: one image each = unknown probes
    centres = {p: _unit(rng.normal(size=(1, 32)))[0] for p in sorted(set(people))}
    emb = _unit(np.stack([centres[p] + 0.02 * rng.normal(size=32) for p in people]))
    emb[6] = centres["a"]  # c's second photo looks like a: a rank-1 miss (a is ranked first, c second)
    paths = np.array([f"{p}/{p}_{i}.jpg" for i, p in enumerate(people)])
    for rel in paths:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())  # distinct content: distinct sha256
    ev = SimpleNamespace(eval_set=SimpleNamespace(identities=np.array(people), image_paths=paths), embeddings=emb)
    model = SimpleNamespace(model_version="m-test", threshold=0.9)
    shot = one_shot(model, ev, tmp_path, tmp_path / "gallery", tmp_path / "model", seed=1)
    s = shot.summary
    assert (s["enrolled_people"], s["known_probes"], s["unknown_probes"]) == (3, 4, 2)
    assert s["one_shot_rank1"] == pytest.approx(3 / 4)  # a, a, b right; c's look-alike photo wrong
    assert s["one_shot_rank5"] == pytest.approx(1.0)  # only 3 people enrolled: everyone is in the top 5
    assert s["open_set_dir"] == pytest.approx(3 / 4)  # the three right ones clear the 0.9 threshold
    assert s["open_set_false_alarm"] == pytest.approx(0.0)  # d and e are far from everyone
    # 1:1: 4 genuine claims (c's is refused) + 4 impostor claims to a random other enrolled person (refused,
    # except when c's look-alike photo happens to claim a)
    assert shot.verify["match"].tolist()[:4] == [True, True, True, False]
    c_claims_a = shot.verify["claimed_identity"].tolist()[7] == "a"
    assert shot.verify["match"].tolist()[4:] == [False, False, False, c_claims_a]
    assert s["verify_accuracy"] == pytest.approx((3 + 4 - c_claims_a) / 8)
    assert set(shot.identify["true_identity"]) == {"a", "b", "c", "d", "e"}
    assert len(shot.verify) == 8
