"""One-shot identification of new people with a saved model, in the demo's protocol (issue 13's acceptance).

The dev folds' people (6-7 of the pairs file: never trained on): ONE image (the first) of each person with >= 2
images is enrolled in a fresh gallery store, their other images are the known probes (rank-1, rank-5, open-set
identification at the model's threshold, 1:1 claims), single-image people are unknown probes (false alarms).
Exactly `facepipe demo`'s numbers (`pipeline.demo.one_shot`), for any saved model.

    .venv/bin/python bench/one_shot.py --model runs/d60bank [--model runs/other ...] [--data ../shared/data]
        [--flip-tta model|on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devdata import lfw_data

from pipeline.data.pairs import pair_people
from pipeline.demo import one_shot
from pipeline.evaluate.protocol import evaluate_model
from pipeline.model.artifacts import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="a saved model directory (repeatable)")
    p.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", "../shared/data"))
    p.add_argument("--flip-tta", choices=("model", "on", "off"), default="model",
                   help="embed with the mirror averaged in (on), without (off), or as the model was saved (model)")
    args = p.parse_args()
    root, table, pairs = lfw_data(args.data)
    for model_dir in args.model:
        model = load_model(model_dir)
        if args.flip_tta != "model":  # the same weights embedded the other way (what the mirror is worth)
            model.meta["preprocessing"]["flip_tta"] = args.flip_tta == "on"
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
