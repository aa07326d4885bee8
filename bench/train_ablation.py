"""Training ablation: each recipe trains from scratch for the same wall-clock budget, then is scored on the dev folds.

Every row is one recipe (config overrides on top of the current defaults), its validation AUC, its dev
metrics (the last two folds of the pairs file: people never trained on) and its training minutes.
Results are appended to a JSON-lines file; ``--table`` renders them as the Markdown table of docs/training.md.

Run (2 CPU cores; one training at a time)::

    python bench/train_ablation.py --data ../shared/data/lfw --pairs ../shared/data/lfw_pairs_dev.txt \\
        --minutes 5 --recipes baseline regnety64 ... --results bench/results/train_ablation.jsonl
    python bench/train_ablation.py --add-model final=runs/final --data ... --pairs ...   # score an existing model
    python bench/train_ablation.py --table --results bench/results/train_ablation.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# libgomp spin-waits by default: on a shared 2-core machine that made a training step up to 15x slower.
# Must be set before torch is imported.

import pandas as pd  # noqa: E402

from pipeline.core.config import Config, config_from_dict, load_config, to_dict  # noqa: E402
from pipeline.data.splits import Split  # noqa: E402
from pipeline.evaluate.protocol import evaluate_model  # noqa: E402
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.train.loop import train  # noqa: E402
from pipeline.train.prepare import (  # noqa: E402
    TrainingData,
    load_split,
    prepare_training,
)

log = logging.getLogger("train_ablation")

# Overrides relative to the current defaults (pipeline/core/config.py). The first rows reproduce the old
# defaults (test_resnet, 64 px, triplet) so that every later change is measured against them.
OLD = ["model.backbone=test_resnet", "data.image_size_px=64", "model.channels_last=false", "loss.name=triplet",
       "train.identities_per_batch=32", "train.images_per_identity=2", "train.ema_decay=0", "data.val_source=folds",
       "train.augment_rotation_deg=0", "train.augment_scale=0", "loss.triplet_weight=0", "train.lr=2e-3",
       "data.crop_fraction=0.52", "train.weight_decay=5e-4", "model.embedding_dim=128"]
# the session-2 data settings and single backbone (session 3 changed these defaults for the ensemble)
S2 = ["data.crop_fraction=0.52", "data.image_size_px=64", "model.backbone=resnet10t", "train.member_shares="]
RECIPES: dict[str, list[str]] = {
    "old-default": OLD,
    "old+contrastive": OLD + ["loss.name=contrastive", "loss.contrastive_margin=0.5"],
    "old+semi-hard": OLD + ["loss.mining=semi-hard"],
    "old+arcface": OLD + ["loss.name=arcface"],
    "regnety002-64": OLD + ["model.backbone=regnety_002", "model.channels_last=true"],
    "regnety002-64-cosface": OLD + ["model.backbone=regnety_002", "model.channels_last=true", "loss.name=cosface"],
    "regnety002-64-pk16x4": OLD + ["model.backbone=regnety_002", "model.channels_last=true",
                                   "train.identities_per_batch=16", "train.images_per_identity=4"],
    "regnety002-64-ema": OLD + ["model.backbone=regnety_002", "model.channels_last=true", "train.ema_decay=0.999"],
    "regnety002-64-affine": OLD + ["model.backbone=regnety_002", "model.channels_last=true",
                                   "train.augment_rotation_deg=10", "train.augment_scale=0.1"],
    "regnety002-64-valtrain": OLD + ["model.backbone=regnety_002", "model.channels_last=true", "data.val_source=train"],
    "regnety002-64-arc+tri": OLD + ["model.backbone=regnety_002", "model.channels_last=true", "loss.name=arcface",
                                    "loss.triplet_weight=1.0"],
    "regnety002-96": OLD + ["model.backbone=regnety_002", "model.channels_last=true", "data.image_size_px=96"],
    "mobilenetv3s-64": OLD + ["model.backbone=mobilenetv3_small_100", "model.channels_last=true"],
    "old+ema": OLD + ["train.ema_decay=0.999"],
    "old+valtrain": OLD + ["data.val_source=train"],
    "old+affine": OLD + ["train.augment_rotation_deg=8", "train.augment_scale=0.08"],
    "old+pk16x4": OLD + ["train.identities_per_batch=16", "train.images_per_identity=4"],
    "old+arc+tri": OLD + ["loss.name=arcface", "loss.triplet_weight=1.0"],
    "old+cosface": OLD + ["loss.name=cosface"],
    "old-96px": OLD + ["data.image_size_px=96"],
    "old-80px": OLD + ["data.image_size_px=80"],
    "old+resnet18": OLD + ["model.backbone=resnet18", "model.channels_last=true"],
    "regnety002-64+ema+valtrain+affine": OLD + ["model.backbone=regnety_002", "model.channels_last=true",
                                                "train.ema_decay=0.999", "data.val_source=train",
                                                "train.augment_rotation_deg=8", "train.augment_scale=0.08"],
    "default": [],  # the defaults of the day it runs (not comparable across sessions)
    # session 2 (defaults then: test_resnet, GAP head; each row pins what it needs, so it reruns as measured)
    "default+cl": S2 + ["model.backbone=test_resnet", "model.channels_last=true"],
    "flat": S2 + ["model.backbone=test_resnet", "model.channels_last=true", "model.head=flatten"],
    "flat+r10t": S2 + ["model.channels_last=true", "model.head=flatten", "model.backbone=resnet10t"],
    "r10t": S2 + ["model.channels_last=true", "model.backbone=resnet10t"],
    # rows on the small backbone (test_resnet + channels_last) for the losses
    "tr+contrastive": S2 + ["model.backbone=test_resnet", "loss.name=contrastive", "loss.contrastive_margin=0.5"],
    "tr+semi-hard": S2 + ["model.backbone=test_resnet", "loss.mining=semi-hard"],
    "tr+arc+tri": S2 + ["model.backbone=test_resnet", "loss.name=arcface", "loss.triplet_weight=1.0"],
    "tr+cosface": S2 + ["model.backbone=test_resnet", "loss.name=cosface"],
    "tr+ms": S2 + ["model.backbone=test_resnet", "loss.name=multi-similarity"],
    "tr+self": S2 + ["model.backbone=test_resnet", "train.sampler_min_images=1"],
    "tr+p64": S2 + ["model.backbone=test_resnet", "train.identities_per_batch=64"],
    "tr+crop44": S2 + ["model.backbone=test_resnet", "data.crop_fraction=0.44"],
    "tr+crop60": S2 + ["model.backbone=test_resnet", "data.crop_fraction=0.60"],
    "r18": S2 + ["model.backbone=resnet18"],
    "tr+erase+gray": S2 + ["model.backbone=test_resnet", "train.augment_erase=0.5", "train.augment_gray=0.2"],
    "tr+self+erase+gray": S2 + ["model.backbone=test_resnet", "train.sampler_min_images=1", "train.augment_erase=0.5",
                           "train.augment_gray=0.2"],
    # session 3: members for an ensemble (seed diversity vs crop diversity)
    "tr+seed1": S2 + ["model.backbone=test_resnet", "train.seed=1"],
    "tr+96px": S2 + ["model.backbone=test_resnet", "data.image_size_px=96"],
}


def data_key(cfg: Config) -> tuple[Any, ...]:
    d, t = cfg.data, cfg.train
    return (d.image_size_px, d.crop_fraction, d.val_source, d.val_fraction, d.dev_folds, d.val_folds, t.augment, t.seed)


def dev_metrics(model_dir: Path, table: pd.DataFrame, split: Split) -> dict[str, Any]:
    """Dev-fold metrics of a saved model (`evaluate_model`, the protocol `facepipe evaluate` reports): k-fold
    accuracy over the dev folds, AUC, EER, TAR@FAR, achieved FAR."""
    if not split.dev:
        raise SystemExit("the ablation needs a pairs file with dev folds")
    return evaluate_model(load_model(model_dir), table, split.dev, split.dev_pairs, name="dev").metrics


def row(name: str, overrides: list[str], cfg: Config, meta: dict[str, Any], dev: dict[str, Any],
        wall_s: float) -> dict[str, Any]:
    p, a = dev["pairs"], dev["all_pairs"]
    tr = meta.get("training", {})
    return {
        "recipe": name, "overrides": overrides, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_minutes": cfg.train.minutes, "budget_steps": cfg.train.max_steps,
        "train_minutes": round(tr.get("seconds", float("nan")) / 60, 2),
        "wall_minutes": round(wall_s / 60, 2), "steps": tr.get("steps"), "epochs": tr.get("epochs"),
        "val_auc": meta["metrics"]["val"].get("pairs", meta["metrics"]["val"].get("all_pairs", {})).get("auc"),
        "dev_acc": p["accuracy"], "dev_acc_std": p["accuracy_std"], "dev_acc_10fold": p.get("accuracy_10fold"),
        "dev_acc_10fold_std": p.get("accuracy_10fold_std"), "dev_auc": p["auc"], "dev_eer": p["eer"],
        "dev_all_auc": a["auc"], "dev_tar_far1e-3": a["tar_at_far"]["0.001"],
        "dev_far_at_threshold": dev["achieved_far"].get(f"far={meta.get('default_far', 1e-3):g}"),
        "load_avg_1min": round(os.getloadavg()[0], 2), "config": to_dict(cfg),
    }


def run(args: argparse.Namespace) -> None:
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    cache_train: dict[tuple[Any, ...], TrainingData] = {}
    for name in args.recipes:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; valid: {sorted(RECIPES)}")
        overrides = RECIPES[name] + list(args.set or []) + [f"train.minutes={args.minutes}",
                                                            f"train.max_steps={args.steps}"]
        cfg = load_config(None, overrides)
        key = data_key(cfg)
        if key not in cache_train:
            cache_train.clear()  # one decoded training set in memory at a time
            cache_train[key] = prepare_training(args.data, args.pairs, cfg)
        data = cache_train[key]
        t0 = time.monotonic()
        out_dir = Path(args.out) / name
        res = train(cfg, data, out_dir)
        dev_m = dev_metrics(out_dir, data.table, data.split)
        r = row(name, RECIPES[name] + list(args.set or []), cfg, res.meta, dev_m, time.monotonic() - t0)
        with results.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        log.info("%s: dev acc %.4f +- %.4f, AUC %.4f, TAR@1e-3 %.4f (%d steps, %.1f min)", name, r["dev_acc"],
                 r["dev_acc_std"], r["dev_auc"], r["dev_tar_far1e-3"], r["steps"], r["train_minutes"])


def add_model(args: argparse.Namespace) -> None:
    """Score an existing model directory (e.g. the 60-minute default run) and append it as a row."""
    name, model_dir = args.add_model.split("=", 1)
    meta = load_model(model_dir).meta
    cfg = config_from_dict(meta["config"])
    if args.metrics:  # the metrics.json that `facepipe evaluate` wrote for this model: same keys
        dev_m = json.loads(Path(args.metrics).read_text())
    else:
        table, split = load_split(args.data, args.pairs, cfg)
        dev_m = dev_metrics(Path(model_dir), table, split)
    r = row(name, ["(model " + model_dir + ")"], cfg, meta, dev_m, 0.0)
    r["wall_minutes"] = None
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with Path(args.results).open("a") as fh:
        fh.write(json.dumps(r) + "\n")


def table(results: Path) -> str:
    """Markdown table of every row in a results file (latest row per recipe name)."""
    rows: dict[str, dict[str, Any]] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["recipe"]] = r
    lines = ["| recipe | budget | train min | steps | val AUC | dev acc (2 folds) | dev acc (10-fold) | dev AUC "
             "| dev EER "
             "| TAR@FAR=1e-3 (all dev pairs) | dev FAR at thr@1e-3 | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        budget = f"{r['budget_minutes']:g} min" + (f", {r['budget_steps']} steps" if r.get("budget_steps") else "")
        acc10 = (f"{r['dev_acc_10fold']:.4f} +- {r['dev_acc_10fold_std']:.4f}"
                 if r.get("dev_acc_10fold") is not None else "-")
        lines.append(f"| {r['recipe']} | {budget} | {r['train_minutes']} | {r['steps']} | {r['val_auc']:.4f} | "
                     f"{r['dev_acc']:.4f} +- {r['dev_acc_std']:.4f} | {acc10} | {r['dev_auc']:.4f} | "
                     f"{r['dev_eer']:.4f} | {r['dev_tar_far1e-3']:.4f} | {r['dev_far_at_threshold']:.5f} | "
                     f"{r['load_avg_1min']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/lfw")
    p.add_argument("--pairs", default="../shared/data/lfw_pairs_dev.txt")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget of every row")
    p.add_argument("--steps", type=int, default=0,
                   help="optimiser-step cap of every row (train.max_steps; 0 = time only)")
    p.add_argument("--recipes", nargs="*", default=[], help=f"rows to run, of {sorted(RECIPES)}")
    p.add_argument("--set", action="append", help="extra section.key=value applied to every row")
    p.add_argument("--out", default="runs/ablation", help="model directories")
    p.add_argument("--results", default="bench/results/train_ablation.jsonl")
    p.add_argument("--add-model", metavar="NAME=MODEL_DIR", help="score an existing model as a row")
    p.add_argument("--metrics", metavar="FILE", help="with --add-model: use this `facepipe evaluate` metrics.json")
    p.add_argument("--table", action="store_true", help="print the Markdown table of --results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.add_model:
        add_model(args)
    if args.recipes:
        run(args)
    if args.table:
        print(table(Path(args.results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
