"""One-shot identification of new people with a saved model, in the demo's protocol (issue 13's acceptance).

The dev folds' people (6-7 of the pairs file: never trained on): ONE image (the first) of each person with >= 2
images is enrolled in a fresh gallery store, their other images are the known probes (rank-1, rank-5, open-set
identification at the model's threshold, 1:1 claims), single-image people are unknown probes (false alarms).
Exactly `facepipe demo`'s numbers (`pipeline.demo.one_shot`), for any saved model.

    .venv/bin/python bench/one_shot.py --model runs/d60bank [--model runs/other ...] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.lfw import lfw_layout
from pipeline.data.manifest import read_images
from pipeline.data.pairs import pair_people, parse_pairs
from pipeline.demo import one_shot
from pipeline.evaluate.protocol import evaluate_model
from pipeline.model.artifacts import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="a saved model directory (repeatable)")
    p.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", "../shared/data"))
    args = p.parse_args()
    root, pairs_file = lfw_layout(Path(args.data))
    if pairs_file is None:
        sys.exit(f"{args.data}: no pairs file beside lfw/")
    table = read_images(root, require_identities=True, required=("image_path", "identity"))
    pairs = parse_pairs(pairs_file)
    for model_dir in args.model:
        model = load_model(model_dir)
        sel = pairs[pairs["fold"].isin(model.meta["config"]["data"]["dev_folds"])]
        ev = evaluate_model(model, table, frozenset(pair_people(sel)), sel, name="dev")
        with tempfile.TemporaryDirectory() as tmp:
            shot = one_shot(model, ev, root, Path(tmp) / "gallery", Path(model_dir).resolve())
        row = {"model": model_dir, "model_version": model.model_version,
               "flip_tta": model.meta["preprocessing"]["flip_tta"], "pair_accuracy": ev.metrics["pairs"]["accuracy"],
               "auc": ev.metrics["pairs"]["auc"], **shot.summary}
        print(json.dumps(row))


if __name__ == "__main__":
    main()
