"""Operator findings 3 and 8 of the retrain flow: the run log on the Prefect server tells the domain story
(data, training, the gate's numbers and verdict, the switch), training rejects are written, and without a
pairs file the gate scores on pinned people that no candidate trained on or validated on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from flow_testlib import TINY, last_flow_run

from flows.retrain import retrain_flow
from lifecycle.registry import ModelRegistry
from pipeline.data.splits import identity_hashes

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def run_log(flow_run_id: object, expect: str, timeout_s: float = 20) -> list[str]:
    """The messages of a flow run's log (its task runs included) as the Prefect server holds them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send what the log worker still holds
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        messages = [lg.message for lg in logs]
        if any(expect in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def test_retrain_tells_its_story_writes_rejects_and_gates_on_untouched_people(real_subset: Path,
                                                                             tmp_path: Path) -> None:
    table = pd.read_csv(real_subset)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    person = table["identity"].iloc[-1]
    pd.concat([table, pd.DataFrame([{"image_path": str(bad), "identity": person}])]).to_csv(
        tmp_path / "data.csv", index=False)
    reg = ModelRegistry.open(tmp_path / "registry", create=True)

    res = retrain_flow(str(reg.root), str(tmp_path / "data.csv"), pairs=None, overrides=[*TINY, "train.minutes=0.1"])

    # training rejects: counted, written next to the candidate's entry, shown in the summary
    assert res["promoted"] and res["training_rejected"] == 1, res
    rejects = pd.read_parquet(res["training_rejects"])
    assert rejects["image_path"].tolist() == [str(bad)] and Path(res["training_rejects"]).parent == reg.root / "entries"

    # the gate's people: pinned, held out, never trained on nor validated on by the candidate
    meta = json.loads((reg.eval_dir / "meta.json").read_text())
    people = set(pd.read_parquet(reg.eval_dir / "images.parquet")["identity"])
    assert meta["name"] == "heldout" and len(people) >= 10
    training = json.loads((reg.model_dir(res["candidate"]) / "model.json").read_text())["training"]
    gate_hashes = set(identity_hashes(sorted(people)))
    assert training["val_people"] >= 10 and len(training["val_identity_hashes"]) == training["val_people"]
    assert not gate_hashes & set(training["train_identity_hashes"])
    assert not gate_hashes & set(training["val_identity_hashes"])
    entry = next(e for e in reg.versions() if e["model_version"] == res["candidate"])
    assert entry["evaluations"][-1]["metrics"]["validated_on_eval_people"] == 0

    # the run log on the server tells the story, with the numbers
    messages = run_log(last_flow_run("retrain").id, "live switched")
    text = "\n".join(messages)
    assert f"training rejected 1 image(s), listed in {res['training_rejects']}" in text
    assert "training data " in text and "1 rejected" in text and f"{len(people)} people held out for the gate" in text
    assert f"trained candidate {res['candidate']}: " in text and " steps in " in text
    gate = next(m for m in messages if m.startswith("gate on the pinned heldout pairs"))
    assert f"trained on by the candidate: 0, validated on: 0): candidate {res['candidate']} auc=" in gate
    assert "no live model" in gate and gate.endswith("-> promote: no current model")
    assert any(m.startswith(f"live switched to model {res['candidate']} with store ") for m in messages)
    assert any(m.startswith("Retrain: candidate promoted: ") and "training_rejected=1" in m for m in messages)
