"""Replace (or append) one `## ` section of a markdown results file, leaving the other sections alone."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, title: str, section: str) -> None:
    """Put ``section`` (which starts with the line ``title``) in place of the old one in ``path``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
