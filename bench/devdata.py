"""The bench scripts' shared start: a data folder -> the LFW root, its image table and the pairs file."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from pipeline.data.lfw import lfw_layout
from pipeline.data.manifest import read_images
from pipeline.data.pairs import parse_pairs


def lfw_data(data: str | Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """(the lfw/ root, its image table with identities, the parsed pairs); one line and exit without a pairs file."""
    root, pairs_file = lfw_layout(Path(data))
    if pairs_file is None:
        sys.exit(f"{data}: no pairs file beside lfw/")
    table = read_images(root, require_identities=True, required=("image_path", "identity"))
    return root, table, parse_pairs(pairs_file)
