"""Aligning an already aligned crop again (what re-embedding a gallery does to rows enrolled with --aligned):
is the face found, and how far is the new crop from the old one? Every 10th of the first 300 LFW photos.

    .venv/bin/python bench/realign_probe.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.faces import AlignerConfig, FaceAligner  # noqa: E402
from pipeline.faces.policy import Mode  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", "../shared/data"))
    a = p.parse_args()
    aligner = FaceAligner(AlignerConfig())
    paths = sorted(glob.glob(str(Path(a.data) / "lfw" / "*" / "*.jpg")))[:300:10]
    aligned, found, diffs = 0, 0, []
    for path in paths:
        first = aligner.align_image(np.asarray(Image.open(path).convert("RGB")), mode=Mode.QUERY)
        if first.crop is None:
            continue
        aligned += 1
        again = aligner.align_image(np.ascontiguousarray(first.crop), mode=Mode.QUERY)
        if again.crop is not None:
            found += 1
            diffs.append(float(np.abs(again.crop.astype(float) - first.crop.astype(float)).mean()))
    print(f"aligned crops re-detected: {found} of {aligned}; mean absolute pixel difference of the re-aligned crop "
          f"{np.mean(diffs):.1f} grey levels")


if __name__ == "__main__":
    main()
