"""Operator findings 6 and 7: run outputs never end up in git, and every Prefect command the docs show runs with
telemetry off (the docs promise that everything stays on the machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TELEMETRY_OFF = ("PREFECT_SERVER_ANALYTICS_ENABLED=false", "DO_NOT_TRACK=1")
# a shell line that starts Prefect: the prefect CLI, or our module that serves deployments
PREFECT_COMMAND = re.compile(r"(^|[\s/;&(])prefect\s+(server|deployment|deploy|worker|work-pool|flow-run)\b|"
                             r"-m flows\.deploy(?!\s+--write-prefect-yaml)")


def shell_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block of a markdown text."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.strip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def unprotected_prefect_commands(text: str) -> list[str]:
    """Prefect commands of the code blocks not preceded (in their block, or on their line) by both switches."""
    bad = []
    for block in shell_blocks(text):
        off: set[str] = set()
        for line in block:
            if line.lstrip().startswith("export "):
                off |= {s for s in TELEMETRY_OFF if s in line}
            if PREFECT_COMMAND.search(line.split("#", 1)[0]):
                if not all(s in off or s in line for s in TELEMETRY_OFF):
                    bad.append(line.strip())
    return bad


DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_prefect_command_in_the_docs_switches_telemetry_off(doc: Path) -> None:
    assert unprotected_prefect_commands(doc.read_text()) == []


def test_the_telemetry_check_finds_an_unprotected_command() -> None:
    """The check above can fail: a command without the switches, or after an export of only one, is found."""
    text = ("```bash\nprefect server start --host 127.0.0.1\n```\n"
            "```bash\nexport DO_NOT_TRACK=1\n.venv/bin/python -m flows.deploy\n```\n"
            "```bash\nexport PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1\nprefect deployment run a/b\n```\n")
    assert unprotected_prefect_commands(text) == ["prefect server start --host 127.0.0.1",
                                                  ".venv/bin/python -m flows.deploy"]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("path", ["registry/CURRENT.json", "registry/stores/x/manifest.json", "runs/demo/model/model.json",
                                  ".hits.parquet.parts/run-1/part-000000.parquet", "hits.rejects.parquet",
                                  "hits.parquet", "model.safetensors", "gallery.faiss"])
def test_run_outputs_and_the_default_registry_are_ignored_by_git(path: str) -> None:
    done = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, check=False)
    assert done.returncode == 0, f"{path} would be committed"
