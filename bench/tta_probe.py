"""Test-time augmentation probe: dev metrics of a saved model with flip TTA off/on and with several
crop fractions averaged (the weights are fixed; only what is embedded changes). Faces are made as the model
was trained (aligned when its model.json names an aligner). Without --crops, the model's own crop fraction alone.

    python bench/tta_probe.py --model runs/final --data ../shared/data/lfw --pairs ../shared/data/lfw_pairs_dev.txt
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.data.manifest import read_images  # noqa: E402
from pipeline.data.pairs import pair_people, parse_pairs  # noqa: E402
from pipeline.evaluate.evalset import build_eval_set  # noqa: E402
from pipeline.evaluate.protocol import evaluate_embeddings  # noqa: E402
from pipeline.faces.loader import preprocessing_from_meta  # noqa: E402
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import embed_array  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/lfw")
    p.add_argument("--pairs", default="../shared/data/lfw_pairs_dev.txt")
    p.add_argument("--crops", default="", help="crop fractions to average, e.g. 0.44,0.52,0.60 (default: the model's)")
    args = p.parse_args()
    model = load_model(args.model)
    pre = model.meta["preprocessing"]
    folds = model.meta["config"]["data"]["dev_folds"]
    pairs = parse_pairs(args.pairs)
    sel = pairs[pairs["fold"].isin(folds)]
    table = read_images(args.data, require_identities=True, required=("image_path", "identity"))
    embs, es = {}, None
    own = float(pre["crop_fraction"])
    for crop in [float(c) for c in args.crops.split(",")] if args.crops else [own]:
        # the model's own preprocessing (its aligner, if any: aligned models get aligned faces) at this crop
        es = build_eval_set("dev", table, frozenset(pair_people(sel)), sel,
                            preprocessing_from_meta({**pre, "crop_fraction": crop}))
        for flip in (False, True):
            embs[(crop, flip)] = embed_array(model.encoder, es.images, flip_tta=flip)
    rows = []
    crops = sorted({c for c, _ in embs})
    combos = [[(c, f)] for c in crops for f in (False, True)]
    combos += [[(c, True) for c in cs] for n in (2, 3) for cs in itertools.combinations(crops, n)]
    for combo in combos:
        e = sum(embs[k] for k in combo)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        m = evaluate_embeddings(es, e, (1e-3,))
        rows.append({"crops": [c for c, _ in combo], "flip": combo[0][1], "acc": m["pairs"]["accuracy"],
                     "acc10": m["pairs"].get("accuracy_10fold"), "auc": m["pairs"]["auc"],
                     "tar1e-3_all": m["all_pairs"]["tar_at_far"]["0.001"]})
        print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
