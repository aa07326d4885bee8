"""Each flow run by hand (``python -m flows.NAME``, here its ``main(argv)`` in-process or a subprocess) takes its
values from a settings file and a flag overrides the file; a failing flow prints one line and exits 2 (the
traceback only with -v), also through ``facepipe flow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from flow_testlib import UNTRAINED, gallery_and_probes, last_flow_run, task_run_count

from flows import enroll, lookup, retrain, rollback
from lifecycle.registry import ModelRegistry

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def settings_file(path: Path, registry: Path | str = "registry", data: Path | str = "", overrides: list[str] = (),
                  **sections: dict[str, Any]) -> Path:
    lines = ["[registry]", f"path = {json.dumps(str(registry))}", "keep_versions = 1", "[retrain]",
             f"data = {json.dumps(str(data))}", f"overrides = {json.dumps(list(overrides))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in sections.pop("retrain", {}).items()]
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_main(module: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``python -m flows.X ARGV`` in-process: exit 0 and the result it printed (one JSON line)."""
    assert module.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_retrain_and_rollback_by_hand_use_the_settings_and_flags_override_them(
        real_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg_dir = tmp_path / "registry"
    settings = settings_file(tmp_path / "flows.toml", reg_dir, real_subset, UNTRAINED,
                             retrain={"min_improvement": 0.25}, chunks={"enroll": 7, "max_in_flight": 3})

    # 1. All from the file: its gate margin, chunks, registry and training overrides (0 steps).
    first = run_main(retrain, ["--settings", str(settings)], capsys)
    assert first["promoted"] and first["min_improvement"] == 0.25
    used = last_flow_run("retrain").parameters
    assert (used["registry"], used["min_improvement"], used["chunk_size"], used["max_in_flight"],
            used["keep_versions"], used["overrides"]) == (str(reg_dir), 0.25, 7, 3, 1, UNTRAINED)
    reg = ModelRegistry.open(reg_dir)
    model_a = reg.require_current().model_version
    assert reg.entry(model_a)["decision"]["min_improvement"] == 0.25
    cfg = json.loads((reg.model_dir(model_a) / "model.json").read_text())["config"]
    assert (cfg["train"]["minutes"], cfg["model"]["backbone"], cfg["data"]["image_size_px"]) == (
        0.0001, "test_resnet", 32)

    # 2. Flags override single values; --set adds to the file's training overrides (30 steps: a better model).
    second = run_main(retrain, ["--settings", str(settings), "--min-improvement", "0", "--chunk-size", "5",
                                "--set", "train.minutes=0.5", "--set", "train.max_steps=30"], capsys)
    used = last_flow_run("retrain").parameters
    assert (used["min_improvement"], used["chunk_size"], used["max_in_flight"]) == (0.0, 5, 3)
    assert used["overrides"] == [*UNTRAINED, "train.minutes=0.5", "train.max_steps=30"]
    model_b = second["candidate"]
    assert reg.entry(model_b)["decision"]["min_improvement"] == 0.0
    cfg = json.loads((reg.model_dir(model_b) / "model.json").read_text())["config"]
    assert (cfg["train"]["max_steps"], cfg["model"]["backbone"]) == (30, "test_resnet")
    assert second["promoted"] and second["candidate_metric"] > second["live_metric"], second  # > 0, not > 0.25

    # 3. Rollback by hand: the registry and catch-up chunk size of the file.
    rolled = run_main(rollback, ["--settings", str(settings)], capsys)
    assert rolled["model_version"] == model_a == reg.require_current().model_version
    assert last_flow_run("rollback").parameters == {"registry": str(reg_dir), "reason": "manual rollback",
                                                    "chunk_size": 7}


def test_enroll_and_lookup_by_hand_use_the_settings_chunks_and_flags_override_them(
        tiny_model: Path, real_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery, probes = gallery_and_probes(real_subset, 10)
    gallery.to_csv(tmp_path / "gallery.csv", index=False)
    probes[["image_path"]].head(13).to_csv(tmp_path / "probes.csv", index=False)
    settings = settings_file(tmp_path / "flows.toml", chunks={"enroll": 4, "lookup": 6, "max_in_flight": 2})
    store = ["--index", str(tmp_path / "store"), "--model", str(tiny_model)]

    res = run_main(enroll, ["--settings", str(settings), "--images", str(tmp_path / "gallery.csv"), *store], capsys)
    assert res["enrolled"] == 10
    run = last_flow_run("enroll")
    assert (run.parameters["chunk_size"], run.parameters["max_in_flight"], run.parameters["registry"]) == (4, 2, None)
    assert task_run_count(run.id, "embed_images", 3) == 3  # 10 images in chunks of 4

    res = run_main(lookup, ["--settings", str(settings), "--probes", str(tmp_path / "probes.csv"), "--out",
                            str(tmp_path / "hits.parquet"), "--index", str(tmp_path / "store")], capsys)
    assert res["probes"] == 13
    run = last_flow_run("lookup")
    assert (run.parameters["chunk_size"], run.parameters["max_in_flight"]) == (6, 2)
    assert task_run_count(run.id, "lookup_chunk", 3) == 3  # 13 probes in chunks of 6

    run_main(lookup, ["--settings", str(settings), "--probes", str(tmp_path / "probes.csv"), "--out",
                      str(tmp_path / "hits2.parquet"), "--index", str(tmp_path / "store"), "--chunk-size", "13",
                      "--max-in-flight", "1"], capsys)
    run = last_flow_run("lookup")
    assert (run.parameters["chunk_size"], run.parameters["max_in_flight"]) == (13, 1)
    assert task_run_count(run.id, "lookup_chunk", 1, timeout_s=3) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "hits.parquet"),
                                  pd.read_parquet(tmp_path / "hits2.parquet"))  # chunking changes nothing


# ----------------------------------------------------------------- the error contract, in real subprocesses
def run_flow(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A flow command in a subprocess reporting to this session's Prefect test server (no temporary server)."""
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    env.pop("FACEPIPE_FLOWS_CONFIG", None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
                          check=False)


def test_a_failing_flow_prints_one_line_and_exits_2(tiny_model: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    done = run_flow(["-m", "flows.enroll", "--images", str(missing), "--index", str(tmp_path / "store"), "--model",
                     str(tiny_model)], tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m flows.enroll: error: {missing} does not exist"), lines
    assert done.stdout == "" and not (tmp_path / "store").exists()  # the input is read before the store is created


def test_with_v_a_failing_flow_shows_the_traceback(tmp_path: Path) -> None:
    done = run_flow(["-m", "flows.lookup", "-v", "--probes", str(tmp_path / "missing.csv"), "--out",
                     str(tmp_path / "hits.parquet"), "--index", str(tmp_path / "store")], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "Beginning flow run" in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"python -m flows.lookup: error: {tmp_path / 'store'} is not a "
                                                   "gallery store")


def test_facepipe_flow_lookup_fails_with_the_same_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_flow(["-m", "pipeline.cli", "flow", "lookup", "--probes", str(tmp_path / "missing.csv"), "--out",
                     str(tmp_path / "hits.parquet"), "--index", str(tmp_path / "store")], tmp_path)
    assert done.returncode == 2, done.stderr
    expected = (f"python -m flows.lookup: error: {tmp_path / 'store'} is not a gallery store (no manifest.json); "
                "enrol first with `facepipe enroll`")
    assert done.stderr.splitlines() == [expected], done.stderr
