"""Retrain flow: pin the evaluation pairs -> load data -> train a candidate -> evaluate it and the live model on
the pinned pairs ->
promote ONLY if it beats the live model by the configured margin -> re-embed the whole enrolled gallery with
it into a new store version -> switch model and store together, atomically -> prune old versions.

A failed or worse candidate leaves production untouched: nothing live changes before the switch, and the
re-embedding fails before it if an enrolled image is missing or changed. The candidate (with its metrics)
stays in the registry either way. ``--candidate`` gates a model trained elsewhere (or a registered version)
instead of training one.
Run: ``python -m flows.retrain --registry DIR --data DATA [--pairs FILE] [--set train.minutes=3]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow

from flows.model_tasks import (commit_into, create_store, decide_promotion, evaluate_version, finalize_store,
                               live_gallery_images, live_pair, load_training_config, pinned_pair_set, prepare_data,
                               prune_registry, publish_evaluation, reembed_images, register_candidate, switch_live,
                               train_candidate)
from flows.settings import dask_address, task_runner
from flows.tasks import publish, windowed
from pipeline.data.manifest import empty_rejects
from pipeline.gallery import chunks


@flow(name="retrain", log_prints=False, task_runner=task_runner(dask_address()))
def retrain_flow(registry: str, data: str, pairs: str | None = None, training_config: str | None = None,
                 overrides: list[str] | None = None, candidate: str | None = None, eval_data: str | None = None,
                 eval_pairs: str | None = None, eval_seed: int = 0, metric: str = "auc", min_improvement: float = 0.0,
                 keep_versions: int = 2, chunk_size: int = 512, max_in_flight: int = 4) -> dict[str, Any]:
    """Train (or take) a candidate and promote it with a re-embedded gallery only if it beats the live model."""
    cfg = load_training_config(training_config, list(overrides or []))
    pair_set = pinned_pair_set(registry, eval_data or data, eval_pairs or pairs, cfg, eval_seed)
    if candidate is None:
        training = prepare_data(data, pairs, cfg)
        version = train_candidate(cfg, training, registry, source=f"retrain on {data}")
    else:
        version = register_candidate(registry, candidate)
    live = live_pair(registry)
    cand_eval = evaluate_version(registry, version, pair_set)
    live_eval = evaluate_version(registry, live.model_version, pair_set) if live is not None else None
    decision = decide_promotion(registry, cand_eval, live_eval, pair_set, metric, min_improvement)
    publish_evaluation(registry, cand_eval, live_eval, decision, cfg.eval.default_far)
    summary = {"candidate": version, "live_before": None if live is None else live.model_version,
               "verdict": decision["verdict"], "reason": decision["reason"], "metric": metric,
               "candidate_metric": decision["candidate"], "live_metric": decision["current"]}
    if decision["verdict"] != "promote":
        publish("Retrain: candidate rejected, production unchanged", summary, empty_rejects(), key="retrain-summary")
        return {**summary, "promoted": False}

    images = live_gallery_images(registry)
    staged = create_store(registry, version)
    batches = windowed(lambda part: reembed_images.submit(registry, version, part), chunks(images, chunk_size),
                       max_in_flight)
    reembedded = sum(commit_into(staged, batch) for batch in batches)
    store_id = finalize_store(registry, staged, version, len(images))
    switched = switch_live(registry, version, store_id, decision["reason"], chunk_size, live)
    pruned = prune_registry(registry, keep_versions)
    summary = {**summary, "store": store_id, "gallery_images_reembedded": reembedded,
               "caught_up_added": switched["caught_up"]["added"], "caught_up_removed": switched["caught_up"]["removed"],
               "pruned": len(pruned)}
    publish("Retrain: candidate promoted", summary, empty_rejects(), key="retrain-summary")
    return {**summary, "promoted": True}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.retrain", description=retrain_flow.__doc__)
    p.add_argument("--registry", required=True)
    p.add_argument("--data", required=True, help="identity folders or a manifest")
    p.add_argument("--pairs", help="LFW-format pairs file (its dev folds are the fixed evaluation pairs)")
    p.add_argument("--config", help="pipeline TOML config for training")
    p.add_argument("--set", action="append", default=[], help="section.key=value override, e.g. train.minutes=3")
    p.add_argument("--candidate", help="gate this model directory (or registered version) instead of training")
    p.add_argument("--metric", default="auc")
    p.add_argument("--min-improvement", type=float, default=0.0)
    p.add_argument("--keep-versions", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--dask-address", help="re-embed the gallery on this Dask scheduler")
    a = p.parse_args(argv)
    fl = retrain_flow.with_options(task_runner=task_runner(a.dask_address)) if a.dask_address else retrain_flow
    res = fl(a.registry, a.data, a.pairs, a.config, a.set, a.candidate, metric=a.metric,
             min_improvement=a.min_improvement, keep_versions=a.keep_versions, chunk_size=a.chunk_size)
    print(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
