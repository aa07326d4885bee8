"""Ensemble probe: dev metrics of saved models alone, of every pair, and of all of them together.

Each model embeds the dev people with its own preprocessing (crop, size, flip TTA); an ensemble's
embedding is the concatenation of the members' unit embeddings / sqrt(M), so its cosine is the mean
of the members' cosines: exactly what ``model.backbone="a+b+..."`` computes. No training happens here:
it measures what combining already-trained models would give, before spending an hour on it.

    python bench/ensemble_probe.py runs/final-r10t runs/ablation/tr+crop60 runs/ablation/tr+crop44 \\
        --data ../shared/data/lfw --pairs ../shared/data/lfw_pairs_dev.txt [--all-subsets]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.core.config import load_config  # noqa: E402
from pipeline.evaluate.evalset import EvalSet, build_eval_set  # noqa: E402
from pipeline.evaluate.protocol import evaluate_embeddings  # noqa: E402
from pipeline.faces.loader import FacePreprocessing  # noqa: E402
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import embed_array  # noqa: E402
from pipeline.train.prepare import load_split  # noqa: E402


def metrics(es: EvalSet, emb: np.ndarray) -> dict[str, float]:
    m = evaluate_embeddings(es, emb.astype(np.float32), (1e-3,))
    p = m["pairs"]
    return {"acc": round(p["accuracy"], 4), "acc10": round(p["accuracy_10fold"], 4),
            "acc10_std": round(p["accuracy_10fold_std"], 4), "auc": round(p["auc"], 4),
            "tar1e-3_all": round(m["all_pairs"]["tar_at_far"]["0.001"], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--data", default="../shared/data/lfw")
    p.add_argument("--pairs", default="../shared/data/lfw_pairs_dev.txt")
    p.add_argument("--all-subsets", action="store_true", help="every subset of 2..M models, not just pairs + all")
    p.add_argument("--split-members", action="store_true",
                   help="treat each member of an ensemble model as its own model (DIR#i): members alone, "
                        "pairs, leave-one-out")
    args = p.parse_args()
    cfg = load_config(None, [])  # only the split settings are used: dev = people of the dev folds
    table, split = load_split(args.data, args.pairs, cfg)
    sets: dict[tuple[float, int], EvalSet] = {}
    embs: dict[str, np.ndarray] = {}
    es = None
    for d in args.models:
        model = load_model(d)
        pre = model.meta["preprocessing"]
        key = (float(pre["crop_fraction"]), int(pre["image_size_px"]))
        if key not in sets:
            sets[key] = build_eval_set("dev", table, split.dev, split.dev_pairs, FacePreprocessing(*key))
        es = sets[key]
        members = getattr(model.encoder, "members", None)
        if args.split_members and members is not None:
            for i, (m, spec) in enumerate(zip(members, model.meta["backbone"].split("+"))):
                embs[f"{d}#{i}:{spec}"] = embed_array(m, es.images, flip_tta=bool(pre["flip_tta"]))
        else:
            embs[d] = embed_array(model.encoder, es.images, flip_tta=bool(pre["flip_tta"]))
    paths = {tuple(s.image_paths) for s in sets.values()}
    if len(paths) != 1:
        raise SystemExit("the models' dev sets differ (an image decoded under one crop but not another)")
    names = list(embs)
    sizes: list[int] = list(range(2, len(names) + 1)) if args.all_subsets else sorted({2, len(names) - 1, len(names)})
    sizes = [k for k in sizes if 2 <= k <= len(names)]
    combos = [(n,) for n in names] + [c for k in sizes for c in itertools.combinations(names, k)]
    for combo in combos:
        e = np.concatenate([embs[n] for n in combo], axis=1) / np.sqrt(len(combo))
        print(json.dumps({"models": list(combo), **metrics(es, e)}), flush=True)


if __name__ == "__main__":
    main()
