"""Post-hoc probe: does a linear map fitted on the TRAINING people's embeddings, or cohort score
normalisation, lift the dev metrics of a saved model? (Measured: no; docs/training.md.)

- WCCN: whiten the within-person covariance (x -> S_w^-1/2 x, ridge ``reg`` * mean eigenvalue).
- LDA: WCCN, then the top-k directions of the between-person covariance.
- AS-norm: the pair score minus / over the mean and std of each side's top-k cohort scores
  (cohort = the training people's images).

    python bench/posthoc_probe.py --model runs/final-r10t --data ../shared/data/lfw --pairs ../shared/data/lfw_pairs_dev.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.core.config import load_config  # noqa: E402
from pipeline.evaluate.evalset import EvalSet, build_eval_set  # noqa: E402
from pipeline.evaluate.metrics import kfold_accuracy, verification_report  # noqa: E402
from pipeline.evaluate.protocol import ten_subfolds  # noqa: E402
from pipeline.faces.loader import FacePreprocessing  # noqa: E402
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import embed_array  # noqa: E402
from pipeline.train.prepare import load_split  # noqa: E402


def report(es: EvalSet, scores: np.ndarray, tag: str) -> None:
    r = verification_report(scores, es.same, es.fold, (1e-3,)).to_dict()
    acc10, std10 = kfold_accuracy(scores, es.same, ten_subfolds(es.fold, es.same))
    print(json.dumps({"method": tag, "acc": round(r["accuracy"], 4), "acc10": round(acc10, 4),
                      "auc": round(r["auc"], 4)}), flush=True)


def cos_pairs(es: EvalSet, e: np.ndarray) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return (e[es.pair_i] * e[es.pair_j]).sum(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/lfw")
    p.add_argument("--pairs", default="../shared/data/lfw_pairs_dev.txt")
    args = p.parse_args()
    model = load_model(args.model)
    pre = model.meta["preprocessing"]
    crop, px = float(pre["crop_fraction"]), int(pre["image_size_px"])
    table, split = load_split(args.data, args.pairs, load_config(None, []))
    tr = build_eval_set("train", table, split.train | split.val, None, FacePreprocessing(crop, px))  # never the dev people
    dev = build_eval_set("dev", table, split.dev, split.dev_pairs, FacePreprocessing(crop, px))
    etr = embed_array(model.encoder, tr.images, flip_tta=True).astype(np.float64)
    edev = embed_array(model.encoder, dev.images, flip_tta=True).astype(np.float64)
    report(dev, cos_pairs(dev, edev), "cosine (as shipped)")

    ids, inv, cnt = np.unique(tr.identities.astype(str), return_inverse=True, return_counts=True)
    multi = cnt[inv] >= 2
    x, y = etr[multi], inv[multi]
    means = np.zeros((len(ids), x.shape[1]))
    np.add.at(means, y, x)
    means /= np.maximum(cnt, 1)[:, None]
    within = (x - means[y]).T @ (x - means[y]) / len(x)
    mu = etr.mean(0)
    between = np.cov((etr - mu).T)
    for reg in (1e-3, 1e-2, 1e-1):
        ev, vecs = np.linalg.eigh(within + reg * np.eye(len(within)) * np.trace(within) / len(within))
        whiten = vecs / np.sqrt(ev)
        report(dev, cos_pairs(dev, (edev - mu) @ whiten), f"WCCN reg={reg}")
        eb, u = np.linalg.eigh(whiten.T @ between @ whiten)
        for k in (32, 64, 96):
            report(dev, cos_pairs(dev, (edev - mu) @ whiten @ u[:, ::-1][:, :k]), f"LDA reg={reg} k={k}")

    raw = cos_pairs(dev, edev)
    cohort = edev @ etr.T
    for k in (50, 200, 1000, len(etr)):
        top = -np.sort(-cohort, axis=1)[:, :k]
        m, s = top.mean(1), top.std(1)
        report(dev, 0.5 * ((raw - m[dev.pair_i]) / s[dev.pair_i] + (raw - m[dev.pair_j]) / s[dev.pair_j]),
               f"AS-norm top-{k}")


if __name__ == "__main__":
    main()
