"""The promotion gate: a candidate model goes live only if it beats the live one on a fixed pair set."""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import ConfigError

HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "eer": False}


class PromotionError(ConfigError):
    """The gate cannot compare: an unknown metric name, metrics without the needed section, a negative margin."""


def metric_value(metrics: dict[str, Any], name: str) -> float:
    """One number from `pipeline.evaluate.protocol.evaluate_embeddings` output (its protocol ``pairs`` section):
    ``auc``, ``accuracy``, ``eer`` or ``tar@far=<far>`` (e.g. ``tar@far=0.001``)."""
    if not isinstance(pairs := metrics.get("pairs"), dict):
        raise PromotionError(f"metrics have no 'pairs' section (keys {sorted(metrics)}); evaluate on a pair set")
    if name.startswith("tar@far="):
        tars = pairs.get("tar_at_far", {})
        key = f"{float(name.split('=', 1)[1]):g}"
        if key not in tars:
            raise PromotionError(f"metric {name!r}: no TAR at FAR {key}; valid: {[f'tar@far={k}' for k in tars]}")
        return float(tars[key])
    if name not in HIGHER_IS_BETTER:
        raise PromotionError(f"metric {name!r} is not one of {[*HIGHER_IS_BETTER, 'tar@far=<far>']}")
    return float(pairs[name])


def decide(candidate: dict[str, Any], current: dict[str, Any] | None, metric: str, min_improvement: float,
           candidate_trained_on: int = 0) -> dict[str, Any]:
    """Promote only if the candidate beats the current model on ``metric`` by MORE than ``min_improvement``
    (both measured on the same pair set; for ``eer`` lower is better). No current model: promote. A
    candidate trained on any of the evaluation people (``candidate_trained_on`` > 0) is rejected: its
    metric is not comparable.

    Returns a JSON-able decision: verdict ("promote" | "reject"), reason, metric, candidate, current, improvement.
    """
    if min_improvement < 0:
        raise PromotionError(f"min_improvement={min_improvement} must be >= 0")
    cand = metric_value(candidate, metric)
    out: dict[str, Any] = {"metric": metric, "candidate": cand, "min_improvement": min_improvement}
    if candidate_trained_on:
        why = f"the candidate was trained on {candidate_trained_on} of the evaluation people: not comparable"
        return {**out, "verdict": "reject", "current": None, "improvement": None, "reason": why}
    if current is None:
        return {**out, "verdict": "promote", "current": None, "improvement": None, "reason": "no current model"}
    cur = metric_value(current, metric)
    gain = (cand - cur) * (1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0)
    ok = gain == gain and gain > min_improvement  # NaN never promotes
    reason = (f"{metric} {cand:.4f} vs current {cur:.4f}: improvement {gain:+.4f} "
              f"{'>' if ok else '<='} required {min_improvement:g}")
    return {**out, "verdict": "promote" if ok else "reject", "current": cur, "improvement": gain, "reason": reason}
