"""Helpers shared by the gallery-store tests: seeded data and brute-force numpy references."""

from __future__ import annotations

import hashlib

import numpy as np

MODEL = "model-test-v1"


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """[n, dim] float32, each row L2-normalised."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy(rng: np.random.Generator, rows: np.ndarray, scale: float) -> np.ndarray:
    """Rows plus Gaussian noise, re-normalised (queries near enrolled templates)."""
    x = rows + scale * rng.standard_normal(rows.shape).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def gallery(rng: np.random.Generator, n_identities: int, dim: int, max_templates: int = 3, prefix: str = "id"
            ) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Identities with 1..max_templates templates each -> (embeddings, identities, image_paths, sha256s)."""
    counts = rng.integers(1, max_templates + 1, size=n_identities)
    names = [f"{prefix}{i:05d}" for i, c in enumerate(counts) for _ in range(c)]
    paths = [f"{name}/img{j}.jpg" for j, name in enumerate(names)]
    return unit_rows(rng, len(names), dim), names, paths, [sha(p + prefix) for p in paths]


def brute_topk(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full score matrix, sorted descending, first min(k, N) columns."""
    scores = queries.astype(np.float64) @ base.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def brute_identities(queries: np.ndarray, base: np.ndarray, names: list[str], aggregation: str
                     ) -> list[list[tuple[str, float]]]:
    """Reference ranking of identities per query (max or mean over each identity's templates)."""
    scores = queries.astype(np.float64) @ base.astype(np.float64).T
    labels = np.asarray(names, dtype=object)
    out = []
    for row in scores:
        agg = {}
        for name in set(names):
            s = row[labels == name]
            agg[name] = s.max() if aggregation == "max" else s.mean()
        out.append(sorted(agg.items(), key=lambda kv: -kv[1]))
    return out


def store_files(root) -> list:
    """Every regular file under a store directory."""
    return sorted(p for p in root.rglob("*") if p.is_file())
