"""Retrain flow: load data -> train a candidate -> report its validation metrics.

(The promotion gate, model registry and gallery re-embedding build on this flow.)
Run: ``python -m flows.retrain --data DIR --pairs FILE --out MODEL_DIR [--minutes N]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd
from prefect import flow

from flows.tasks import prepare_data, publish, train_model
from pipeline.config import load_config


@flow(name="retrain", log_prints=False)
def retrain_flow(data: str, out: str, pairs: str | None = None, config: str | None = None,
                 overrides: list[str] | None = None) -> dict[str, Any]:
    """Train a candidate model on ``data`` (identity folders), validated on held-out people."""
    cfg = load_config(config, overrides or [])
    prepared = prepare_data(data, pairs, cfg)
    result = train_model(cfg, prepared, out)
    val = result.meta["metrics"]["val"]
    counts = {"model_version": result.meta["model_version"], "steps": result.steps,
              "minutes": round(result.seconds / 60, 2), "val_auc": round(val.get("pairs", {}).get("auc", float("nan")), 4),
              "threshold": round(result.meta["default_threshold"], 4)}
    publish("Retrain", counts, pd.DataFrame(columns=["image_path", "error"]), key="retrain-summary")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.retrain", description=retrain_flow.__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pairs")
    p.add_argument("--config")
    p.add_argument("--minutes", type=float)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args(argv)
    overrides = a.set + ([f"train.minutes={a.minutes}"] if a.minutes else [])
    print(retrain_flow(a.data, a.out, a.pairs, a.config, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
