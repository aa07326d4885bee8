"""Plots for evaluation reports (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.evaluate.metrics import all_pair_scores, roc_curve  # noqa: E402
from pipeline.evaluate.protocol import ModelEvaluation  # noqa: E402


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike[str],
             threshold_far: float | None = None) -> Path:
    """ROC (TAR vs FAR, log FAR axis) and DET (FRR vs FAR) side by side. ``curves``: label -> (scores, labels)."""
    fig, (ax_roc, ax_det) = plt.subplots(1, 2, figsize=(10, 4.2))
    for label, (scores, labels) in curves.items():
        far, tar, _ = roc_curve(scores, labels)
        keep = far > 0
        ax_roc.plot(far[keep], tar[keep], label=label)
        ax_det.plot(far[keep], 1 - tar[keep], label=label)
    for ax, ylab in ((ax_roc, "TAR (true accept rate)"), (ax_det, "FRR (false reject rate)")):
        ax.set_xscale("log")
        ax.set_xlabel("FAR (false accept rate)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        if threshold_far:
            ax.axvline(threshold_far, color="grey", linestyle=":", label=f"FAR={threshold_far:g}")
        ax.legend(loc="best", fontsize=8)
    ax_det.set_yscale("log")
    ax_roc.set_title("ROC")
    ax_det.set_title("DET")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def plot_score_histogram(scores: np.ndarray, labels: np.ndarray, path: str | os.PathLike[str],
                         threshold: float | None = None) -> Path:
    """Genuine vs impostor cosine-score histograms (densities), with the decision threshold."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-1, 1, 81)
    ax.hist(scores[~labels], bins=bins, density=True, alpha=0.6, label=f"impostor ({int((~labels).sum())})")
    ax.hist(scores[labels], bins=bins, density=True, alpha=0.6, label=f"genuine ({int(labels.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def write_evaluation_plots(ev: ModelEvaluation, roc_path: str | os.PathLike[str], scores_path: str | os.PathLike[str],
                           *, default_far: float, label: str = "") -> tuple[Path, Path]:
    """The report's two figures for an evaluated model: ROC/DET of the protocol pairs and of all image pairs,
    and the genuine vs impostor score histograms with the model's threshold."""
    all_s, all_l = all_pair_scores(ev.embeddings, ev.eval_set.identities)
    prefix = f"{label} " if label else ""
    roc = plot_roc({f"{prefix}pairs": (ev.pair_scores, ev.eval_set.same), f"{prefix}all pairs": (all_s, all_l)},
                   roc_path, threshold_far=default_far)
    hist = plot_score_histogram(all_s, all_l, scores_path, float(ev.metrics["threshold"]))
    return roc, hist
