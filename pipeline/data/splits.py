"""Train / validation / dev splits by PERSON, so no evaluated person is ever trained on.

With an LFW pairs file: the people of ``dev_folds`` are the dev (test) set, the people of
``val_folds`` (minus dev people) are the validation set (checkpoint choice and threshold
calibration), and every other person in the data folder trains.
Without a pairs file: a seeded random ``val_fraction`` of the identities with >= 2 images validates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.data.pairs import pair_people


@dataclass(frozen=True)
class Split:
    """Identity sets and the pair tables of one split (pairs hold paths relative to the data root)."""

    train: frozenset[str]
    val: frozenset[str]
    dev: frozenset[str]
    val_pairs: pd.DataFrame | None
    dev_pairs: pd.DataFrame | None


def split_by_pairs(identities: set[str], pairs: pd.DataFrame, dev_folds: tuple[int, ...],
                   val_folds: tuple[int, ...]) -> Split:
    """Split people using the folds of a pairs file (see module docstring)."""
    n_folds = int(pairs["fold"].max())
    for f in (*dev_folds, *val_folds):
        if not 1 <= f <= n_folds:
            raise DataError(f"fold {f} does not exist: the pairs file has folds 1..{n_folds}")
    if set(dev_folds) & set(val_folds):
        raise DataError(f"dev_folds {dev_folds} and val_folds {val_folds} overlap")
    dev_pairs = pairs[pairs["fold"].isin(dev_folds)].reset_index(drop=True)
    val_pairs = pairs[pairs["fold"].isin(val_folds)].reset_index(drop=True)
    dev = pair_people(dev_pairs)
    val = pair_people(val_pairs) - dev
    # a val pair that touches a dev person would leak nothing into training, but keep val clean too
    val_pairs = val_pairs[val_pairs["name1"].isin(val) & val_pairs["name2"].isin(val)].reset_index(drop=True)
    missing = sorted((dev | val) - identities)
    if missing:
        raise DataError(f"pairs file names {len(missing)} people not in the data folder, e.g. {missing[:3]}")
    train = identities - dev - val
    return Split(frozenset(train), frozenset(val), frozenset(dev), val_pairs if len(val_pairs) else None,
                 dev_pairs if len(dev_pairs) else None)


def split_random(table: pd.DataFrame, val_fraction: float, seed: int) -> Split:
    """Hold out a random fraction of the multi-image identities for validation (no dev set)."""
    counts = table["identity"].value_counts()
    multi = sorted(counts[counts >= 2].index)
    if len(multi) < 4:
        raise DataError(f"need at least 4 identities with >= 2 images to validate, found {len(multi)}")
    rng = np.random.default_rng(seed)
    n_val = max(2, int(round(len(multi) * val_fraction)))
    val = set(rng.choice(multi, size=n_val, replace=False).tolist())
    train = set(counts.index) - val
    return Split(frozenset(train), frozenset(val), frozenset(), None, None)


def make_pairs(table: pd.DataFrame, n_pairs: int, seed: int) -> pd.DataFrame:
    """Seeded balanced genuine/impostor pairs from an image table (columns path1, path2, same, fold=1)."""
    rng = np.random.default_rng(seed)
    by_id = {k: v["image_path"].tolist() for k, v in table.groupby("identity")}
    multi = [k for k, v in by_id.items() if len(v) >= 2]
    ids = list(by_id)
    if not multi or len(ids) < 2:
        raise DataError("cannot make validation pairs: need identities with >= 2 images and >= 2 identities")
    rows = []
    for _ in range(n_pairs):
        k = multi[rng.integers(len(multi))]
        a, b = rng.choice(len(by_id[k]), size=2, replace=False)
        rows.append((by_id[k][a], by_id[k][b], True))
        k1, k2 = rng.choice(len(ids), size=2, replace=False)
        p1, p2 = by_id[ids[k1]], by_id[ids[k2]]
        rows.append((p1[rng.integers(len(p1))], p2[rng.integers(len(p2))], False))
    out = pd.DataFrame(rows, columns=["path1", "path2", "same"])
    out["fold"] = 1 + (np.arange(len(out)) * 10 // len(out))
    return out


def identity_hashes(names: list[str]) -> list[str]:
    """Short hashes of the training people's names: lets ``evaluate`` detect leakage without storing names."""
    return sorted(hashlib.sha256(n.encode()).hexdigest()[:16] for n in names)
