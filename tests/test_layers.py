"""The architecture as a test: one dependency chain, imports only point down it.

    indexes <- pipeline.core <- pipeline.data <- pipeline.faces <- pipeline.model <- pipeline.evaluate
            <- pipeline.train <- pipeline.serve <- pipeline.cli / pipeline.demo <- lifecycle <- flows

Every import statement in the source (module level or inside a function) is checked against the chain, so a
lazy import cannot hide an upward dependency. Third-party rules: `indexes` never imports torch, timm, OpenCV
or prefect; nothing below `flows` imports prefect. docs/architecture.md explains the chain.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("indexes", "pipeline", "lifecycle", "flows")

# lowest first; a module may import its own layer and the layers before it, never one after it
CHAIN: tuple[tuple[str, ...], ...] = (
    ("indexes",),
    ("pipeline", "pipeline.core"),  # the package root only applies core's runtime tuning
    ("pipeline.data",),
    ("pipeline.faces",),
    ("pipeline.model",),
    ("pipeline.evaluate",),  # training evaluates and calibrates through the evaluation protocol
    ("pipeline.train",),
    ("pipeline.serve",),
    ("pipeline.cli", "pipeline.demo"),
    ("lifecycle",),
    ("flows",),
)
BANNED_THIRD_PARTY = {
    "indexes": {"torch", "timm", "torchvision", "cv2", "prefect", "prefect_dask"},
    "pipeline": {"prefect", "prefect_dask"},
    "lifecycle": {"prefect", "prefect_dask"},
}


def layer_of(module: str) -> int | None:
    """Index in CHAIN of the longest layer prefix of a dotted module name; None for third-party modules."""
    best, best_len = None, -1
    for i, names in enumerate(CHAIN):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    return best


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from pipeline import faces` names a submodule: check it, not just the package root
            found += [(node.lineno, f"{target}.{alias.name}" if layer_of(f"{target}.{alias.name}") is not None
                       and layer_of(f"{target}.{alias.name}") != layer_of(target) else target)
                      for alias in node.names]
    return found


def violations(root: Path) -> list[str]:
    """Every import in ``root``'s packages that points up the chain or at a banned third-party package."""
    bad = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            module = _module_name(path, root)
            here = layer_of(module)
            assert here is not None, f"{module} is in no layer of the chain: add it to CHAIN"
            for lineno, target in _imports(path, module):
                there = layer_of(target)
                where = f"{path.relative_to(root)}:{lineno}"
                if there is not None and there > here:
                    bad.append(f"{where}: {module} ({CHAIN[here][-1]}) imports {target} ({CHAIN[there][-1]}), "
                               "which sits above it")
                top = target.split(".")[0]
                if top in BANNED_THIRD_PARTY.get(pkg, set()):
                    bad.append(f"{where}: {module} imports {top}, which {pkg}/ must not use")
    return bad


def test_no_module_imports_up_the_chain() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("pipeline/data/leak.py", "from pipeline.model.encoder import Encoder\n", "imports pipeline.model.encoder"),
    ("pipeline/core/leak.py", "def f():\n    import pipeline.serve.gallery\n", "imports pipeline.serve.gallery"),
    ("pipeline/faces/leak.py", "from pipeline import train\n", "imports pipeline.train"),
    ("pipeline/cli/leak.py", "from lifecycle.registry import ModelRegistry\n", "imports lifecycle.registry"),
    ("lifecycle/leak.py", "from flows.tasks import publish\n", "imports flows.tasks"),
    ("pipeline/evaluate/leak.py", "from ..train.loop import train\n", "imports pipeline.train.loop"),
    ("indexes/leak.py", "import torch\n", "imports torch"),
    ("pipeline/serve/leak.py", "from prefect import flow\n", "imports prefect"),
])
def test_the_checker_catches_an_upward_import(tmp_path: Path, module: str, source: str, expected: str) -> None:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    path = tmp_path / module
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").write_text("")
    path.write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0], found


def test_downward_and_same_layer_imports_pass(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "flows" / "ok.py").write_text("import prefect\nfrom lifecycle import live\nfrom indexes import GalleryStore\n")
    (tmp_path / "pipeline" / "train").mkdir()
    (tmp_path / "pipeline" / "train" / "ok.py").write_text(
        "from pipeline.evaluate.protocol import evaluate_model\nfrom pipeline.train.recipe import build_loss\n")
    assert violations(tmp_path) == []


def _loaded_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_indexes_loads_neither_torch_nor_prefect() -> None:
    mods = _loaded_after("import indexes")
    assert "indexes" in mods and "faiss" in mods
    assert not {"torch", "prefect", "pipeline", "cv2"} & mods


def test_the_library_and_lifecycle_do_not_load_prefect() -> None:
    mods = _loaded_after("import pipeline.cli, pipeline.train.loop, pipeline.serve.gallery, pipeline.demo, lifecycle.live")
    assert "torch" in mods
    assert not {"prefect", "flows"} & mods


def test_importing_pipeline_applies_the_runtime_tuning() -> None:
    code = "import os; os.environ.pop('OMP_WAIT_POLICY', None); import pipeline; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
