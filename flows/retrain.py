"""Retrain flow: pin the evaluation pairs -> load data -> train a candidate -> evaluate it and the live model on
the pinned pairs ->
promote ONLY if it beats the live model by the configured margin -> re-embed the whole enrolled gallery with
it into a new store version -> switch model and store together, atomically -> prune old versions.

A failed or worse candidate leaves production untouched: nothing live changes before the switch, and the
re-embedding fails before it if an enrolled image is missing or changed. The candidate (with its metrics)
stays in the registry either way. ``--candidate`` gates a model trained elsewhere (or a registered version)
instead of training one.
Run: ``python -m flows.retrain [--settings FLOWS_TOML] [--min-improvement 0.01] [--set train.minutes=5] ...``: every
value not given comes from the flows settings (flows/flows.toml), as for the deployment.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow

from flows.cli import FlowParser, given, run_main, with_runner
from flows.model_tasks import (
    commit_into,
    create_store,
    decide_promotion,
    evaluate_version,
    finalize_store,
    live_gallery_images,
    live_pair,
    load_training_config,
    pinned_pair_set,
    prepare_data,
    prune_registry,
    publish_evaluation,
    record_training_rejects,
    reembed_images,
    register_candidate,
    switch_live,
    train_candidate,
)
from flows.settings import (
    FlowSettings,
    dask_address,
    flow_defaults,
    flow_parameters,
    task_runner,
)
from flows.tasks import publish, windowed
from pipeline.core.errors import ConfigError
from pipeline.data.manifest import empty_rejects
from pipeline.serve.gallery import chunks

D = flow_defaults("retrain")  # flows.toml's values: the ONE source of these defaults (flows.settings.flow_parameters)


@flow(name="retrain", log_prints=False, task_runner=task_runner(dask_address(), check_api=False))
def retrain_flow(registry: str = D["registry"], data: str = D["data"], pairs: str | None = D["pairs"],
                 training_config: str | None = D["training_config"], overrides: list[str] | None = D["overrides"],
                 candidate: str | None = None, eval_data: str | None = D["eval_data"],
                 eval_pairs: str | None = D["eval_pairs"], eval_seed: int = 0, metric: str = D["metric"],
                 min_improvement: float = D["min_improvement"], keep_versions: int = D["keep_versions"],
                 chunk_size: int = D["chunk_size"], max_in_flight: int = D["max_in_flight"]) -> dict[str, Any]:
    """Train (or take) a candidate and promote it with a re-embedded gallery only if it beats the live model."""
    if not data and candidate is None:
        raise ConfigError("no training data: set [retrain] data in the flows settings or pass --data (or gate a "
                          "trained model with --candidate)")
    cfg = load_training_config(training_config, list(overrides or []))
    pair_set = pinned_pair_set(registry, eval_data or data, eval_pairs or pairs, cfg, eval_seed)
    training_rejects = empty_rejects()
    if candidate is None:
        training = prepare_data(data, pairs, cfg, pair_set.people)
        version = train_candidate(cfg, training, registry, source=f"retrain on {data}")
        training_rejects = training.rejects
        rejects_file = record_training_rejects(registry, version, training_rejects)
    else:
        version, rejects_file = register_candidate(registry, candidate), None
    live = live_pair(registry)
    cand_eval = evaluate_version(registry, version, pair_set)
    live_eval = evaluate_version(registry, live.model_version, pair_set) if live is not None else None
    decision = decide_promotion(registry, cand_eval, live_eval, pair_set, metric, min_improvement)
    publish_evaluation(registry, cand_eval, live_eval, decision, cfg.eval.default_far)
    summary = {"candidate": version, "live_before": None if live is None else live.model_version,
               "verdict": decision["verdict"], "reason": decision["reason"], "metric": metric,
               "min_improvement": min_improvement, "candidate_metric": decision["candidate"],
               "live_metric": decision["current"], "training_rejected": len(training_rejects),
               "training_rejects": rejects_file}
    if decision["verdict"] != "promote":
        publish("Retrain: candidate rejected, production unchanged", summary, training_rejects, key="retrain-summary")
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
    publish("Retrain: candidate promoted", summary, training_rejects, key="retrain-summary")
    return {**summary, "promoted": True}


def parser() -> FlowParser:
    p = FlowParser("retrain", __doc__)
    p.add_setting("--registry", "registry.path", "the model registry directory", metavar="DIR")
    p.add_setting("--data", "retrain.data", "training data: identity folders or a manifest", metavar="DIR|MANIFEST")
    p.add_setting("--pairs", "retrain.pairs", "LFW-format pairs file; its dev folds are the pinned evaluation pairs "
                  "('' for none)", metavar="FILE")
    p.add_setting("--training-config", "retrain.training_config", "pipeline TOML config for training (sections data, "
                  "model, loss, train, eval; '' for none)", metavar="FILE")
    p.add_argument("--config", dest="legacy_config", metavar="FILE", help=argparse.SUPPRESS)  # deprecated alias
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="training config override, added after [retrain] overrides (later wins), e.g. "
                        "--set train.minutes=5 (repeatable)")
    p.add_argument("--candidate", help="gate this model directory (or registered version) instead of training")
    p.add_setting("--eval-data", "retrain.eval_data", "where the evaluation pairs are pinned from ('' = --data)",
                  metavar="DIR|MANIFEST")
    p.add_setting("--eval-pairs", "retrain.eval_pairs", "pairs file of the pinned evaluation ('' = --pairs)",
                  metavar="FILE")
    p.add_argument("--eval-seed", type=int, help="split seed of the pinned evaluation without a pairs file (0)")
    p.add_setting("--metric", "retrain.metric", "gate metric: auc, accuracy, eer or tar@far=<far>")
    p.add_setting("--min-improvement", "retrain.min_improvement", "promote only if better by MORE than this",
                  type=float)
    p.add_setting("--keep-versions", "registry.keep_versions", "previous pairs kept for rollback", type=int)
    p.add_setting("--chunk-size", "chunks.enroll", "images per re-embedding task and commit", type=int)
    p.add_setting("--max-in-flight", "chunks.max_in_flight", "re-embedding tasks at once", type=int)
    p.add_argument("--dask-address", help="re-embed the gallery on this Dask scheduler (default: "
                                          "$FACEPIPE_DASK_ADDRESS, else [dask] address)")
    return p


def run(a: argparse.Namespace, settings: FlowSettings) -> dict[str, Any]:
    params = {**flow_parameters(settings)["retrain"], **given(a, "candidate", "eval_seed")}
    if a.legacy_config:
        if a.training_config is not None:
            raise ConfigError("--config is a deprecated alias of --training-config: give only --training-config")
        print("python -m flows.retrain: warning: --config is deprecated: use --training-config FILE (the pipeline "
              "training config; the flows settings are --settings FILE)", file=sys.stderr)
        params["training_config"] = a.legacy_config
    return with_runner(retrain_flow, a.dask_address, settings)(**params)


def main(argv: list[str] | None = None) -> int:
    return run_main(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
