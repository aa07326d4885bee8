"""Prefect tasks of the retrain and rollback flows: training, evaluation on a fixed pair set, the model
registry and the gallery re-embedding. Each wraps `pipeline` calls; retries only on I/O."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NONE

from flows.settings import FlowSettings
from flows.tasks import IO_RETRIES, cached_model, cached_store, markdown_table, story
from indexes import GalleryStore
from lifecycle import live
from lifecycle.promotion import decide
from lifecycle.registry import ModelRegistry, Pair
from pipeline.core.config import Config, load_config
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.io import write_parquet_atomic
from pipeline.core.loader import read_toml
from pipeline.data.manifest import read_images
from pipeline.data.splits import make_pairs, split_random
from pipeline.evaluate.plots import plot_roc
from pipeline.evaluate.protocol import evaluate_model
from pipeline.serve import gallery
from pipeline.train.loop import train
from pipeline.train.prepare import TrainingData, load_split, prepare_training

GATE_PAIRS = 1000  # genuine pairs (and as many impostor pairs) of a pinned evaluation without a pairs file


@task(cache_policy=NONE)
def load_training_config(config: str | None, overrides: list[str]) -> Config:
    """The pipeline training config: ``config`` (a TOML file; refused if it is a flows settings file) + overrides."""
    if config:
        sections = set(read_toml(config, "training config"))
        flows_sections = {f.name for f in fields(FlowSettings)}
        if sections & flows_sections and not sections & {f.name for f in fields(Config)}:
            raise ConfigError(f"training config {config} is a flows settings file (sections {sorted(sections)}): pass "
                              f"it as --settings {config}; --training-config takes a pipeline config (sections "
                              f"{[f.name for f in fields(Config)]})")
    return load_config(config, overrides)


@task(cache_policy=NONE, **IO_RETRIES)
def prepare_data(data: str, pairs: str | None, cfg: Config, holdout: frozenset[str] = frozenset()) -> TrainingData:
    """Decode the training data; the ``holdout`` people (the gate's) are neither trained nor validated on."""
    training = prepare_training(data, pairs, cfg, holdout)
    story("training data %s: %d images of %d people, %d rejected; %d validation people; %d people held out for "
          "the gate", data, len(training.labels), len(training.class_names), len(training.rejects),
          len(training.split.val), len(frozenset(holdout) & set(training.table["identity"])))
    return training


@task(cache_policy=NONE, **IO_RETRIES)
def record_training_rejects(registry: str, version: str, rejects: pd.DataFrame) -> str | None:
    """The images training could not use (``image_path``, ``error``), next to the candidate's registry entry,
    as ``facepipe train`` writes them next to its model -> the file, or None when there were none."""
    if not len(rejects):
        return None
    path = ModelRegistry.open(registry).root / "entries" / f"{version}-train-rejects.parquet"
    write_parquet_atomic(rejects[["image_path", "error"]].astype(str).reset_index(drop=True), path)
    first = rejects.iloc[0]
    story("training rejected %d image(s), listed in %s; first: %s: %s", len(rejects), path, first["image_path"],
          first["error"])
    return str(path)


@task(cache_policy=NONE)
def train_candidate(cfg: Config, data: TrainingData, registry: str, source: str) -> str:
    """Train in the registry's staging area, register the model (with its training metrics) -> version."""
    reg = ModelRegistry.open(registry, create=True)
    staging = reg.new_staging("train")
    try:
        result = train(cfg, data, staging / "model")
        version = reg.register_model(result.model_dir, source=source)
        story("trained candidate %s: %d steps in %.1f min on %d images; best validation AUC %.4f", version,
              result.steps, result.seconds / 60, len(data.labels), result.best_val_auc)
        return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@task(cache_policy=NONE, **IO_RETRIES)
def register_candidate(registry: str, candidate: str) -> str:
    """A model trained elsewhere (a model directory) or a registered version, as the candidate."""
    reg = ModelRegistry.open(registry, create=True)
    if not Path(candidate).is_dir() and reg.model_dir(candidate).is_dir():
        return candidate
    return reg.register_model(candidate, source=str(Path(candidate).resolve()))


@task(cache_policy=NONE, **IO_RETRIES)
def live_pair(registry: str) -> Pair | None:
    return ModelRegistry.open(registry, create=True).current()


# ----------------------------------------------------------------- evaluation on the fixed pair set
@dataclass(frozen=True)
class PairSet:
    """The fixed evaluation pairs: the images of the evaluation people, and the pairs over them."""

    name: str
    images: pd.DataFrame  # image_path, abs_path, identity
    pairs: pd.DataFrame  # path1, path2, same, fold
    fars: tuple[float, ...]

    @property
    def people(self) -> frozenset[str]:
        return frozenset(self.images["identity"])


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics on a PairSet, with the pair scores (float32 (P,)) and labels (bool (P,)) for ROC, and
    how many evaluation people the model was trained on (from its model.json; must be 0 to be comparable)."""

    model_version: str
    metrics: dict[str, Any]
    scores: np.ndarray
    labels: np.ndarray
    trained_on_eval_people: int


@task(cache_policy=NONE, **IO_RETRIES)
def pinned_pair_set(registry: str, data: str, pairs: str | None, cfg: Config, seed: int) -> PairSet:
    """The registry's evaluation pairs, pinned by the first retrain so every later run compares on the SAME
    pairs whatever its training overrides: with an LFW pairs file its dev folds (never trained on), otherwise
    ``heldout``: a seeded ``data.val_fraction`` of the people with >= 2 images and ``GATE_PAIRS`` genuine +
    as many impostor pairs over them. Every candidate the flow trains leaves the pinned people out of its
    training AND its validation (`prepare_data`), so neither model chose a checkpoint or a threshold on them."""
    reg = ModelRegistry.open(registry, create=True)
    if not reg.eval_dir.is_dir():
        if pairs:
            table, split = load_split(data, pairs, replace(cfg, train=replace(cfg.train, seed=seed)))
            name, people, chosen = "dev", split.dev, split.dev_pairs
        else:
            table = read_images(data, require_identities=True, required=("image_path", "identity"))
            name, people = "heldout", split_random(table, cfg.data.val_fraction, seed).val
            chosen = make_pairs(table[table["identity"].isin(people)], GATE_PAIRS, seed)
        if chosen is None or not len(chosen):
            raise DataError(f"{data}: no {name} pairs to evaluate on")
        staged = reg.new_staging("eval")
        images = table[table["identity"].isin(people)][["image_path", "abs_path", "identity"]]
        write_parquet_atomic(images.reset_index(drop=True), staged / "images.parquet")
        write_parquet_atomic(chosen[["path1", "path2", "same", "fold"]], staged / "pairs.parquet")
        (staged / "meta.json").write_text(json.dumps({"name": name, "data": str(data), "pairs": pairs, "seed": seed,
                                                      "fars": list(cfg.eval.target_fars)}, indent=2))
        reg.pin_eval(staged)
    meta = json.loads((reg.eval_dir / "meta.json").read_text())
    return PairSet(meta["name"], pd.read_parquet(reg.eval_dir / "images.parquet"),
                   pd.read_parquet(reg.eval_dir / "pairs.parquet"), tuple(meta["fars"]))


@task(cache_policy=NONE, **IO_RETRIES)
def evaluate_version(registry: str, version: str, pair_set: PairSet) -> Evaluation:
    """Embed the pair set's faces with a registered model (at its own preprocessing) and score the pairs."""
    model = cached_model(str(ModelRegistry.open(registry).model_dir(version)))
    ev = evaluate_model(model, pair_set.images, pair_set.people, pair_set.pairs, name=pair_set.name, fars=pair_set.fars)
    return Evaluation(version, ev.metrics, ev.pair_scores, ev.eval_set.same, len(ev.trained_on))


@task(cache_policy=NONE, **IO_RETRIES)
def decide_promotion(registry: str, candidate: Evaluation, live: Evaluation | None, pair_set: PairSet, metric: str,
                     min_improvement: float) -> dict[str, Any]:
    """The promotion gate (`lifecycle.promotion.decide`); both evaluations are recorded in the registry."""
    reg = ModelRegistry.open(registry)
    decision = decide(candidate.metrics, None if live is None else live.metrics, metric, min_improvement,
                      candidate.trained_on_eval_people)
    decision["against"] = None if live is None else live.model_version
    on = {"pair_set": pair_set.name, "pairs": len(candidate.labels), "people": len(pair_set.people)}
    if live is not None:
        reg.record_evaluation(live.model_version, {**on, "metrics": live.metrics, "role": "live",
                                                   "trained_on_eval_people": live.trained_on_eval_people})
    reg.record_evaluation(candidate.model_version, {**on, "metrics": candidate.metrics, "role": "candidate",
                                                    "trained_on_eval_people": candidate.trained_on_eval_people},
                          decision)
    live_part = "no live model" if live is None else f"live {live.model_version} {metric}={decision['current']:.4f}"
    story("gate on the pinned %s pairs (%d pairs, %d people; trained on by the candidate: %d, validated on: %d): "
          "candidate %s %s=%.4f, %s, min_improvement %g -> %s: %s", pair_set.name, len(candidate.labels),
          len(pair_set.people), candidate.trained_on_eval_people,
          candidate.metrics.get("validated_on_eval_people", 0), candidate.model_version, metric,
          decision["candidate"], live_part, min_improvement, decision["verdict"], decision["reason"])
    return decision


@task(cache_policy=NONE)
def publish_evaluation(registry: str, candidate: Evaluation, live: Evaluation | None, decision: dict[str, Any],
                       far: float) -> str:
    """ROC image (saved next to the candidate's registry entry), metrics table and decision as artifacts."""
    reg = ModelRegistry.open(registry)
    curves = {f"candidate {candidate.model_version}": (candidate.scores, candidate.labels)}
    if live is not None:
        curves[f"live {live.model_version}"] = (live.scores, live.labels)
    png = plot_roc(curves, reg.root / "entries" / f"{candidate.model_version}-roc.png", threshold_far=far)
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    create_image_artifact(uri, key="retrain-roc", description=f"ROC/DET of {candidate.model_version} vs live")
    rows = [{"model": f"{role} {ev.model_version}", **_flat(ev.metrics["pairs"])}
            for role, ev in (("candidate", candidate), ("live", live)) if ev is not None]
    create_table_artifact(rows, key="retrain-metrics", description="metrics on the fixed evaluation pairs")
    lines = [f"# Retrain: {decision['verdict']}", "", decision["reason"], "", *markdown_table(rows), "",
             f"![ROC]({uri})", "", f"ROC image: `{png}`"]
    create_markdown_artifact("\n".join(lines), key="retrain-evaluation", description="candidate vs live")
    return str(png)


def _flat(pairs: dict[str, Any]) -> dict[str, Any]:
    out = {k: round(v, 4) for k, v in pairs.items() if isinstance(v, float)}
    out.update({f"tar@far={k}": round(v, 4) for k, v in pairs.get("tar_at_far", {}).items()})
    return out


# ----------------------------------------------------------------- the new gallery version and the switch
@task(cache_policy=NONE, **IO_RETRIES)
def create_store(registry: str, version: str) -> str:
    """An empty store for ``version`` in the registry's staging area -> its path."""
    reg = ModelRegistry.open(registry)
    staged = reg.new_staging("store")
    gallery.open_gallery(staged, reg.model_dir(version), create=True)
    return str(staged)


@task(cache_policy=NONE, **IO_RETRIES)
def live_gallery_images(registry: str) -> pd.DataFrame:
    """The live gallery's images (image_path, abs_path, identity, image_sha256); fails now if any is missing."""
    reg = ModelRegistry.open(registry)
    pair = reg.current()
    if pair is None:
        return pd.DataFrame(columns=["image_path", "abs_path", "identity", "image_sha256"])
    images = gallery.gallery_images(GalleryStore.open(reg.store_dir(pair.store)))
    gallery.require_clean(gallery.missing_images(images), f"re-embedding the live gallery {pair.store}")
    return images


@task(cache_policy=NONE, **IO_RETRIES)
def reembed_images(registry: str, version: str, chunk: pd.DataFrame) -> gallery.EnrolBatch:
    """Re-embed enrolled images with the candidate; a missing or changed image fails the run."""
    return gallery.reembed_chunk(cached_model(str(ModelRegistry.open(registry).model_dir(version))), chunk)


@task(cache_policy=NONE, **IO_RETRIES)
def commit_into(store_dir: str, batch: gallery.EnrolBatch) -> int:
    return len(gallery.commit_enrolment(cached_store(store_dir), batch).results)


@task(cache_policy=NONE, **IO_RETRIES)
def finalize_store(registry: str, staged: str, version: str, expected_rows: int) -> str:
    """Check the new store holds every image, then move it into stores/ -> store id (not live yet)."""
    rows = len(GalleryStore.open(staged, model_version=version))
    if rows != expected_rows:
        raise DataError(f"the re-embedded gallery {staged} has {rows} rows, the live one {expected_rows}")
    return ModelRegistry.open(registry).add_store(Path(staged), version)


@task(cache_policy=NONE, **IO_RETRIES)
def switch_live(registry: str, version: str, store_id: str, reason: str, chunk_size: int,
                decided_against: Pair | None) -> dict[str, Any]:
    """Make (model, store) live atomically, after the catch-up of images enrolled meanwhile; refused if the
    live pair is no longer the one the promotion was decided against."""
    ptr, caught_up = live.switch_pair(ModelRegistry.open(registry), version, store_id, reason=reason,
                                         chunk_size=chunk_size,
                                         expect_live=None if decided_against is None else decided_against.store)
    story("live switched to model %s with store %s; catch-up of enrolments made meanwhile: %d added, %d removed",
          version, store_id, caught_up["added"], caught_up["removed"])
    return {"pointer": ptr.to_dict(), "caught_up": caught_up}


@task(cache_policy=NONE, **IO_RETRIES)
def roll_back(registry: str, reason: str, chunk_size: int) -> dict[str, Any]:
    ptr, caught_up = live.rollback_pair(ModelRegistry.open(registry), reason=reason, chunk_size=chunk_size)
    story("rolled back to model %s with store %s; catch-up: %d added, %d removed", ptr.current.model_version,
          ptr.current.store, caught_up["added"], caught_up["removed"])
    return {"pointer": ptr.to_dict(), "caught_up": caught_up}


@task(cache_policy=NONE, **IO_RETRIES)
def prune_registry(registry: str, keep: int) -> list[str]:
    pruned = ModelRegistry.open(registry).prune(keep)
    story("pruned %d old version(s), keeping %d for rollback", len(pruned), keep)
    return pruned
