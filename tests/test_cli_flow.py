"""`facepipe flow NAME` runs the flow module in a subprocess (pipeline never imports flows)."""

import subprocess
import sys
from pathlib import Path


def test_flow_subcommand_reaches_the_flow_module() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "flow", "lookup", "--help"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "python -m flows.lookup" in out.stdout and "--probes" in out.stdout


def test_flow_subcommand_rejects_unknown_flows() -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "flow", "nope"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2 and "invalid choice: 'nope'" in out.stderr


def test_flow_errors_come_back_as_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "flows.toml"
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "flow", "retrain", "--settings", str(missing)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"python -m flows.retrain: error: flows settings {missing} does not exist"]
