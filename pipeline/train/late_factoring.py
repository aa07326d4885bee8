"""Factor the student's 1x1 convolutions part-way through a run (``train.factor_at``), not at its start.

A factored student with ``train.factor_at = 0`` starts from the rank-r factorisation of the *teacher's* weights at
stride 2, an untrained student far from its trained accuracy (dev AUC 0.854 for ranks F, session 16),
and spends its hour both adapting to stride 2 and recovering the rank it lost. With ``train.factor_at = f`` the
run first trains the full-rank student for a share f of its schedule, then factors *those* trained weights (the
weight average's, which is what is evaluated and saved) on the same calibration faces
(:func:`pipeline.model.inherit.factor_pointwise`) and trains the thinner student for the rest: compression after
training, as low-rank compression of a trained network is usually done, inside one time budget. The default
(session 18): ranks F at f = 0.3.

After the switch the optimiser starts afresh (the parameters are new), the learning-rate schedule continues, the
best-so-far is reset (the saved model must have the factored shape that model.json records), and the factored
student is evaluated at once (its start, in the run's history as ``"factored": true``). A run that stops before
the switch (its time, an interruption) factors its best full-rank weights at the end, so that what it saves always
has the factored shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.config import Config
from pipeline.model.inherit import factor_pointwise, freeze_tail, ranked_blocks


def is_late(cfg: Config) -> bool:
    """True when this run factors its convolutions part-way (``train.factor_at`` with ``model.pw_ranks``)."""
    return cfg.train.factor_at > 0 and any(cfg.model.pw_ranks)


def full_rank_arch(arch: dict[str, Any] | None) -> dict[str, Any] | None:
    """The student's architecture before the switch: ``arch`` without its factored convolutions."""
    return None if arch is None else {k: v for k, v in arch.items() if k != "pw_ranks"}


def factored_before(ckpt_dir: Path) -> bool:
    """Whether the checkpoint a run resumes from was written after the switch (its weights are factored)."""
    try:
        return bool(json.loads((ckpt_dir / "state.json").read_text()).get("factored", False))
    except (OSError, ValueError):
        return False


def factor_trained(kept: nn.Module, cfg: Config, calib: torch.Tensor) -> None:
    """Factor the evaluated weights ``kept`` (the weight average, or the model when there is none) in place, on
    ``calib`` (model-input faces on the model's device)."""
    factor_pointwise(kept, ranked_blocks(kept, cfg.model.pw_ranks, cfg.model.drop_blocks), calib)
    if cfg.model.freeze_blocks:  # the new convolutions of frozen blocks stay frozen
        freeze_tail(kept, cfg.model.freeze_blocks)
