"""How closely a distilled student reproduces its teacher, on people it trained on and on the dev people.

For a sample of training people (>= 2 images, not of the validation or dev folds) and for every dev-fold person,
both models embed the same photos (each its own way: the student with the preprocessing in its model.json, the
teacher on the 112 px aligned face). Reported per set:
- ``sim_corr``: the correlation of the student's and the teacher's pairwise cosine similarities;
- ``nn_agree``: how often the student's nearest other photo is the teacher's;
- ``auc_student`` / ``auc_teacher``: same-person vs different-person separation of the pairwise similarities;
- the student's mean genuine and impostor similarity (and the impostors' spread).
A student that matches the teacher on its training people but not on new ones lacks data; one that matches
neither lacks capacity or steps.

    .venv/bin/python bench/fit_probe.py --model runs/d60bank [--train-people 300] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from devdata import lfw_data
from sklearn.metrics import roc_auc_score

from pipeline.core.config import cache_dir
from pipeline.data.pairs import pair_people
from pipeline.evaluate.evalset import build_eval_set
from pipeline.faces.crop_cache import AlignedCropCache
from pipeline.faces.loader import (
    FacePreprocessing,
    build_aligner,
    preprocessing_from_meta,
)
from pipeline.model.artifacts import load_model
from pipeline.model.embed import embed_array
from pipeline.model.teachers import create_teacher


def agreement(student: np.ndarray, teacher: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    """The measures of the module docstring for row-aligned unit embeddings of the same photos."""
    s_sim, t_sim = student @ student.T, teacher @ teacher.T
    iu = np.triu_indices(len(student), 1)
    same = (identities[:, None] == identities[None, :])[iu]
    ss, tt = s_sim[iu], t_sim[iu]
    np.fill_diagonal(s_sim, -9)
    np.fill_diagonal(t_sim, -9)
    return {"images": len(student), "sim_corr": round(float(np.corrcoef(ss, tt)[0, 1]), 4),
            "nn_agree": round(float(np.mean(s_sim.argmax(1) == t_sim.argmax(1))), 4),
            "auc_student": round(float(roc_auc_score(same, ss)), 4),
            "auc_teacher": round(float(roc_auc_score(same, tt)), 4),
            "student_genuine_mean": round(float(ss[same].mean()), 3),
            "student_impostor_mean": round(float(ss[~same].mean()), 3),
            "student_impostor_sd": round(float(ss[~same].std()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="a saved distilled model (repeatable)")
    p.add_argument("--data", default=os.environ.get("FACEPIPE_DATA", "../shared/data"))
    p.add_argument("--train-people", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    _root, table, pairs = lfw_data(args.data)
    for model_dir in args.model:
        model = load_model(model_dir)
        data_cfg = model.meta["config"]["data"]
        held = set(pair_people(pairs[pairs["fold"].isin([*data_cfg["dev_folds"], *data_cfg["val_folds"]])]))
        dev = frozenset(pair_people(pairs[pairs["fold"].isin(data_cfg["dev_folds"])]))
        counts = table.groupby("identity").size()
        trained = sorted(p for p in counts.index if p not in held and counts[p] >= 2)
        sample = frozenset(np.random.default_rng(args.seed).choice(trained, min(args.train_people, len(trained)),
                                                                   replace=False).tolist())
        teacher = create_teacher(model.meta["training"]["teacher"]["name"])
        t_prep = FacePreprocessing(1.0, 112, build_aligner("yunet", 112),
                                   cache=AlignedCropCache(cache_dir("") / "aligned"))
        for name, people in (("train", sample), ("dev", dev)):
            s_set = build_eval_set(name, table, people, None, preprocessing_from_meta(model.meta["preprocessing"]))
            t_set = build_eval_set(name, table, people, None, t_prep)
            t_pos = {p: i for i, p in enumerate(t_set.image_paths)}
            both = [i for i, p in enumerate(s_set.image_paths) if p in t_pos]
            student = embed_array(model.encoder, s_set.images[both], flip_tta=False)
            theirs = teacher.embed(t_set.images[[t_pos[s_set.image_paths[i]] for i in both]])
            row = {"model": str(model_dir), "set": name, "people": len(people),
                   **agreement(student, theirs, s_set.identities[both])}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
