"""How tightly a teacher's embeddings crowd around a shared direction (what `distill.centre_teacher` acts on).

For each teacher embedding cache (a Parquet in ``~/.cache/facepipe/teachers``, written by training): the norm of
the mean of its unit embeddings, and the cosine of random pairs of distinct images before and after centring.

    .venv/bin/python bench/teacher_cone.py ~/.cache/facepipe/teachers/teacher-*.parquet [--pairs 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.model.teachers.base import l2_normalise
from pipeline.train.teacher_targets import CENTRE_MIN_MEAN_NORM


def cone(path: Path, pairs: int, seed: int = 0) -> dict:
    table = pq.read_table(path, columns=["embedding"])
    meta = json.loads(table.schema.metadata.get(b"facepipe.teacher_cache", b"{}"))
    emb = l2_normalise(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), what=path.name)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(emb), pairs), rng.integers(0, len(emb), pairs)
    keep = i != j
    i, j = i[keep], j[keep]
    mean = emb.mean(axis=0)
    centred = l2_normalise(emb - mean, what=path.name)
    before, after = (emb[i] * emb[j]).sum(axis=1), (centred[i] * centred[j]).sum(axis=1)
    norm = float(np.linalg.norm(mean))
    return {"file": path.name, "teacher": meta.get("teacher_name"), "images": len(emb), "pairs": int(keep.sum()),
            "mean_norm": round(norm, 4), "auto_centres": norm >= CENTRE_MIN_MEAN_NORM,
            "pair_cosine": [round(float(before.mean()), 4), round(float(before.std()), 4)],
            "pair_cosine_centred": [round(float(after.mean()), 4), round(float(after.std()), 4)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("caches", nargs="+", type=Path, help="teacher embedding cache Parquet files")
    p.add_argument("--pairs", type=int, default=5000, help="random image pairs drawn (seeded)")
    args = p.parse_args()
    for path in args.caches:
        print(json.dumps(cone(path, args.pairs)))


if __name__ == "__main__":
    main()
