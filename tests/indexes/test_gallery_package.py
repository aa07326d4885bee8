"""Package boundaries and house style of `indexes` (cheap static checks)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import indexes

PACKAGE = Path(indexes.__file__).resolve().parent
ALLOWED_TOP_LEVEL = {"numpy", "pandas", "pyarrow", "faiss", "indexes"}


def test_import_does_not_load_torch_or_prefect() -> None:
    code = ("import sys, indexes; bad = {'torch', 'prefect', 'timm'} & set(sys.modules); "
            "print(sorted(bad)); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_library_imports_only_stdlib_and_allowed_packages_and_has_no_print_or_assert() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                roots = set()
            for root in roots:
                assert root in ALLOWED_TOP_LEVEL or root in sys.stdlib_module_names, f"{path.name} imports {root}"
            assert not isinstance(node, ast.Assert), f"{path.name}:{node.lineno} uses assert"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"{path.name}:{node.lineno} calls print"


def test_public_api_is_exported() -> None:
    for name in ("GalleryStore", "StoreError", "ModelVersionMismatch", "StoreCorrupt", "StoreLocked", "IndexConfig",
                 "EnrollResult"):
        assert name in indexes.__all__ and hasattr(indexes, name)
    assert issubclass(indexes.ModelVersionMismatch, indexes.StoreError)
    assert issubclass(indexes.StoreCorrupt, indexes.StoreError) and issubclass(indexes.StoreError, ValueError)
