"""The dependency direction: flows -> pipeline, indexes; never back. indexes takes numpy only."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_indexes_loads_neither_torch_nor_prefect() -> None:
    mods = _loaded_after("import indexes")
    assert "indexes" in mods and "faiss" in mods
    assert "torch" not in mods
    assert "prefect" not in mods
    assert "pipeline" not in mods


def test_pipeline_does_not_load_prefect_or_flows() -> None:
    mods = _loaded_after("import pipeline.cli, pipeline.train, pipeline.gallery, pipeline.demo, pipeline.embed")
    assert "torch" in mods
    assert "prefect" not in mods
    assert "flows" not in mods


def test_no_source_file_imports_upwards() -> None:
    bad = []
    for pkg, banned in (("pipeline", ("prefect", "flows")), ("indexes", ("torch", "timm", "prefect", "flows", "pipeline"))):
        for f in (ROOT / pkg).rglob("*.py"):
            for line in f.read_text().splitlines():
                s = line.strip()
                if s.startswith(("import ", "from ")) and s.split()[1].split(".")[0] in banned:
                    bad.append(f"{f.relative_to(ROOT)}: {s}")
    assert bad == []
