"""Deployments: prefect.yaml is generated from flows/flows.toml and equals what `python -m flows.deploy` serves,
and (slow) a real `prefect server start` on 127.0.0.1 with the served deployments runs the retrain flow on its
cron schedule to completion."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from flow_testlib import UNTRAINED

from flows.deploy import build_deployments, prefect_yaml
from flows.settings import DEFAULT_CONFIG, flow_parameters, load_settings
from lifecycle.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_has_the_same_deployments_as_flows_deploy() -> None:
    settings = load_settings(DEFAULT_CONFIG)
    served = {d.name: d for d in build_deployments(settings)}
    declared = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert sorted(declared) == sorted(served) == ["enroll", "forget", "lookup", "retrain", "rollback"]
    for name, d in declared.items():
        path, func = d["entrypoint"].split(":")
        assert served[name].entrypoint == path.removesuffix(".py").replace("/", ".") + "." + func
        assert d["parameters"] == flow_parameters(settings)[name] == served[name].parameters
        assert d.get("concurrency_limit") == served[name].concurrency_limit
        assert d["description"] == served[name].description and d["tags"] == served[name].tags
        crons = [(s.schedule.cron, s.schedule.timezone) for s in served[name].schedules or []]
        assert [(s["cron"], s["timezone"]) for s in d.get("schedules", [])] == crons
    assert [s.schedule.cron for s in served["retrain"].schedules] == [settings.retrain.cron]


def test_every_prefect_yaml_parameter_equals_its_flows_toml_value() -> None:
    """Read both files as plain data (not through flows.settings): every deployment parameter is the value
    flows/flows.toml gives (or the documented default of a key the file leaves out)."""
    toml = tomllib.loads(DEFAULT_CONFIG.read_text())
    reg, retrain, chunks, rejects = toml["registry"], toml["retrain"], toml["chunks"], toml["rejects"]
    expected = {
        "retrain": {"registry": reg["path"], "data": retrain["data"], "pairs": retrain["pairs"],
                    "training_config": retrain.get("training_config"), "overrides": retrain["overrides"],
                    "eval_data": retrain.get("eval_data"), "eval_pairs": retrain.get("eval_pairs"),
                    "metric": retrain["metric"], "min_improvement": retrain["min_improvement"],
                    "keep_versions": reg["keep_versions"], "chunk_size": chunks["enroll"],
                    "max_in_flight": chunks["max_in_flight"]},
        "enroll": {"registry": reg["path"], "chunk_size": chunks["enroll"], "max_in_flight": chunks["max_in_flight"],
                   "fail_reject_share": rejects["fail_share"]},
        "lookup": {"registry": reg["path"], "chunk_size": chunks["lookup"], "max_in_flight": chunks["max_in_flight"],
                   "fail_reject_share": rejects["fail_share"]},
        "rollback": {"registry": reg["path"], "chunk_size": chunks["enroll"]},
        "forget": {"registry": reg["path"]},
    }
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["name"]: d["parameters"] for d in declared} == expected
    retrain_deployment = next(d for d in declared if d["name"] == "retrain")
    assert retrain_deployment["schedules"] == [{"cron": retrain["cron"], "timezone": retrain["timezone"]}]
    assert retrain_deployment["parameters"]["min_improvement"] == 0.002  # the documented gate margin


def test_prefect_yaml_is_what_write_prefect_yaml_generates() -> None:
    """prefect.yaml is generated (`python -m flows.deploy --write-prefect-yaml`), not edited by hand."""
    def without_version(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("prefect-version:"))

    committed = (REPO / "prefect.yaml").read_text()
    assert without_version(committed) == without_version(prefect_yaml(load_settings(DEFAULT_CONFIG))), \
        "prefect.yaml is stale: run `python -m flows.deploy --write-prefect-yaml`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


@contextmanager
def started(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session (so its flow-run children stop with it), stopped within 20 s."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
                    try:
                        proc.wait(wait_s)
                    except subprocess.TimeoutExpired:
                        continue


def wait_for(check: Any, timeout_s: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; log:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.realdata
def test_a_served_retrain_deployment_runs_on_its_schedule(real_subset: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": url, "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"})
    overrides = json.dumps(UNTRAINED)
    (tmp_path / "flows.toml").write_text(f"""
[registry]
path = "{tmp_path / 'registry'}"
[retrain]
data = "{real_subset}"
overrides = {overrides}
cron = "* * * * * */10"   # a sixth (seconds) field: every 10 s, so the test need not wait for a minute
""")
    prefect = str(Path(sys.executable).with_name("prefect"))
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    with started([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, server_log, tmp_path):
        wait_for(lambda: api(url, "/health"), 90, "the Prefect server", server_log)

        # prefect.yaml deploys as is to a process work pool
        for cmd in ([prefect, "work-pool", "create", "facepipe", "--type", "process"],
                    [prefect, "--no-prompt", "deploy", "--all"]):
            done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
        pooled = api(url, "/deployments/filter", {})
        assert sorted(d["name"] for d in pooled) == ["enroll", "forget", "lookup", "retrain", "rollback"]
        assert all(d["work_pool_name"] == "facepipe" for d in pooled)

        # `python -m flows.deploy` serves the same five, and the scheduled retrain run completes
        with started([sys.executable, "-m", "flows.deploy", "--settings", str(tmp_path / "flows.toml")], env, serve_log,
                     tmp_path):
            def completed() -> list[dict[str, Any]]:
                runs = api(url, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": [
                    "COMPLETED", "FAILED", "CRASHED"]}}}, "deployments": {"name": {"any_": ["retrain"]}}})
                bad = [r for r in runs if r["state_type"] != "COMPLETED"]
                assert not bad, f"{bad[0]['state_name']}: {bad[0]['state']['message']}\n{serve_log.read_text()[-3000:]}"
                return runs

            runs = wait_for(completed, 150, "a completed scheduled retrain run", serve_log)
        assert runs[0]["auto_scheduled"] and runs[0]["deployment_id"]
        served = {d["name"]: d for d in api(url, "/deployments/filter", {})}
        assert sorted(served) == ["enroll", "forget", "lookup", "retrain", "rollback"]
    live = ModelRegistry.open(tmp_path / "registry").require_current()  # the scheduled run promoted a model
    assert live.reason == "no current model"
