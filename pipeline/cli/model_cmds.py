"""CLI commands about models: train, evaluate, embed, demo, fetch-lfw."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.cli.common import (
    progress,
    table,
    teacher_progress,
    train_progress,
    write_rejects,
)
from pipeline.core.config import load_config
from pipeline.core.errors import DataError
from pipeline.core.io import write_json_atomic, write_parquet_atomic
from pipeline.data.lfw import fetch_lfw, lfw_layout, resolve_data_dir
from pipeline.data.manifest import read_images
from pipeline.data.pairs import pair_people, parse_pairs
from pipeline.evaluate.plots import write_evaluation_plots
from pipeline.evaluate.protocol import evaluate_model
from pipeline.model.artifacts import load_model
from pipeline.model.embed import embed_table, embeddings_table
from pipeline.train.loop import train
from pipeline.train.prepare import prepare_training
from pipeline.train.teacher_targets import attach_teacher


def _config(args: argparse.Namespace, extra: list[str] | None = None):
    overrides = list(extra or []) + list(args.set or [])
    if getattr(args, "minutes", None) is not None:
        overrides.append(f"train.minutes={args.minutes}")
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    return load_config(args.config, overrides)


def _with_teacher(data, cfg, quiet: bool):
    """The teacher's embeddings of the training faces (from the cache; missing ones computed) with a bar."""
    update, close = teacher_progress(not quiet)
    try:
        return attach_teacher(data, cfg, progress=update)
    finally:
        close()


def cmd_train(args: argparse.Namespace, out) -> int:
    cfg = _config(args)
    data = prepare_training(args.data, args.pairs, cfg)
    if len(data.rejects):
        write_rejects(data.rejects, Path(args.out) / "train-rejects.parquet", out)
    data = _with_teacher(data, cfg, args.quiet)
    on_step, close = train_progress(not args.quiet)
    try:
        result = train(cfg, data, args.out, resume=args.resume, on_step=on_step)
    finally:
        close()
    val = result.meta["metrics"]["val"]
    pairs = val.get("pairs", {})
    out(f"model {result.meta['model_version']} saved to {result.model_dir}")
    out(table([
        ("backbone", result.meta["backbone"]),
        *[(f"  member {i}", f"{m['backbone']} (view {m['view']:g}): {m['steps']} steps, val AUC {m['best_val_auc']:.4f}")
          for i, m in enumerate(result.meta["training"].get("members", []))],
        ("steps / epochs", f"{result.steps} / {result.epochs:.1f}"),
        ("minutes", f"{result.seconds / 60:.2f}"),
        ("train images / people", f"{len(data.labels)} / {len(data.class_names)}"),
        ("val AUC (pairs)", f"{pairs.get('auc', float('nan')):.4f}"),
        ("threshold @ FAR", ", ".join(f"{k}: {v:.4f}" for k, v in result.meta["thresholds"].items())),
    ]))
    return 0


def cmd_evaluate(args: argparse.Namespace, out) -> int:
    model = load_model(args.model, device=args.device or "auto")
    pairs = parse_pairs(args.pairs)
    if args.folds == "all":
        folds = sorted(set(pairs["fold"]))
    elif args.folds:
        folds = [int(f) for f in args.folds.split(",")]
    else:  # the folds the model was told never to train on
        folds = [f for f in model.meta["config"]["data"]["dev_folds"] if f in set(pairs["fold"])]
    sel = pairs[pairs["fold"].isin(folds)]
    if sel.empty:
        raise DataError(f"{args.pairs}: no pairs in folds {folds}")
    data_table = read_images(args.data, require_identities=True, required=("image_path", "identity"))
    people = frozenset(pair_people(sel))
    with progress(int(data_table["identity"].isin(people).sum()), "embed", enabled=not args.quiet) as update:
        ev = evaluate_model(model, data_table, people, sel, progress=update)
    if ev.trained_on:
        out(f"warning: {len(ev.trained_on)} evaluated people were in the training set, e.g. {sorted(ev.trained_on)[:3]}")
    metrics = {**ev.metrics, "folds": folds}
    es = ev.eval_set
    out_path = Path(args.out) if args.out else Path(args.model) / "eval" / "metrics.json"
    write_json_atomic(out_path, metrics)
    stem = out_path.with_suffix("")
    write_evaluation_plots(ev, f"{stem}_roc.png", f"{stem}_scores.png", default_far=float(model.meta.get("default_far", 1e-3)))
    p = metrics["pairs"]
    far_key = f"{model.meta.get('default_far', 1e-3):g}"
    out(table([
        ("folds / pairs", f"{folds} / {p['pairs']}"),
        ("accuracy (k-fold)", f"{p['accuracy']:.4f} +- {p['accuracy_std']:.4f}"),
        ("ROC AUC", f"{p['auc']:.4f}"),
        ("EER", f"{p['eer']:.4f}"),
        (f"TAR @ FAR={far_key} (all pairs)", f"{metrics['all_pairs']['tar_at_far'][far_key]:.4f}"),
        ("FAR at model threshold", f"{metrics['achieved_far'][f'far={far_key}']:.5f}"),
    ]))
    out(f"wrote {out_path}, {stem}_roc.png, {stem}_scores.png")
    write_rejects(es.rejects, Path(f"{stem}_rejects.parquet"), out)
    return 0


def cmd_embed(args: argparse.Namespace, out) -> int:
    model = load_model(args.model, device=args.device or "auto")
    images = read_images(args.images)
    t0 = time.monotonic()
    with progress(len(images), "embed", enabled=not args.quiet) as update:
        all_rows, all_emb, rejects = embed_table(model, images, chunk_size=args.chunk_size, progress=update)
    write_parquet_atomic(embeddings_table(all_rows, all_emb, model.model_version), args.out)
    rate = len(images) / (time.monotonic() - t0)
    out(f"embedded {len(all_rows)} of {len(images)} images ({rate:.0f} img/s) -> {args.out}")
    write_rejects(rejects, Path(args.out).with_suffix(".rejects.parquet"), out)
    return 0


# The demo trains the default recipe (the student that starts from the teacher's weights) for minutes, not an
# hour. A --config file or --set ... changes it like `train`'s.
DEMO_RECIPE: list[str] = []


def cmd_demo(args: argparse.Namespace, out) -> int:
    data_dir = resolve_data_dir(args.data)
    from pipeline.demo import run_demo  # imports indexes (allowed for the CLI)

    cfg = _config(args, [] if args.config else DEMO_RECIPE)
    out_dir = Path(args.out)
    out(f"demo: data {data_dir}, {cfg.train.minutes:g} min training budget, output {out_dir}")
    on_step, close = train_progress(not args.quiet)
    try:
        res = run_demo(data_dir, out_dir, cfg, on_step=on_step,
                       with_teacher=lambda data: _with_teacher(data, cfg, args.quiet))
    finally:
        close()
    s = res.summary
    far_key = f"{cfg.eval.default_far:g}"
    out(table([
        ("model", f"{s['model_version']} ({cfg.model.backbone}, {s['train_minutes']} min, {s['train_people']} people)"),
        ("dev pairs (never trained on)", str(s["dev_pairs"])),
        ("pair accuracy (k-fold)", f"{s['pair_accuracy']:.4f} +- {s['pair_accuracy_std']:.4f}"),
        ("ROC AUC", f"{s['auc']:.4f}"),
        ("EER", f"{s['eer']:.4f}"),
        (f"TAR @ FAR={far_key}", f"{s[f'tar@far={far_key}']:.4f}  (threshold {s['threshold']:.4f}, "
                                  f"achieved FAR {s['achieved_far']:.5f})"),
        ("one-shot gallery", f"{s['enrolled_people']} people, 1 image each"),
        ("one-shot rank-1 / rank-5", f"{s['one_shot_rank1']:.4f} / {s['one_shot_rank5']:.4f}  "
                                     f"({s['known_probes']} probes)"),
        ("open-set: identified / false alarms", f"{s['open_set_dir']:.4f} / {s['open_set_false_alarm']:.4f}  "
                                                f"({s['unknown_probes']} unknown probes)"),
        ("1:1 verify accuracy", f"{s['verify_accuracy']:.4f}"),
        ("embedding throughput", f"{s['embed_images_per_s']:.0f} images/s (decode + embed)"),
        ("identify throughput", f"{s['identify_queries_per_s']:.0f} queries/s"),
    ]))
    out(f"report: {out_dir / 'report'} (metrics.json, identify.parquet, verify.parquet, roc.png, scores.png)")
    return 0


def cmd_fetch_lfw(args: argparse.Namespace, out) -> int:
    with progress(None, "download", unit="B", enabled=not args.quiet) as update:
        dest = fetch_lfw(args.dest, url=args.url, md5=None if args.no_verify else args.md5,
                         pairs_url=args.pairs_url, pairs_md5=None if args.no_verify else args.pairs_md5,
                         progress=update)
    root, pairs = lfw_layout(dest)
    out(f"LFW ready in {dest}: {sum(1 for _ in root.iterdir())} people, pairs file {pairs}; "
        f"use --data {dest} or FACEPIPE_DATA={dest}")
    return 0
