"""The main job end to end on LFW: train, calibrate, enrol held-out people from ONE image, query, report.

Held-out = the dev people (never trained on). Each dev person with >= 2 images is enrolled from
their first image; their other images are the "known" probes. Dev people with a single image are
never enrolled: they are the "unknown" probes that open-set identification must reject.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexes import GalleryStore
from pipeline.core.config import Config
from pipeline.core.errors import DataError
from pipeline.core.io import file_digest, write_parquet_atomic
from pipeline.data.lfw import lfw_layout
from pipeline.evaluate.plots import write_evaluation_plots
from pipeline.evaluate.protocol import ModelEvaluation, evaluate_model
from pipeline.model.artifacts import LoadedModel, load_model
from pipeline.train.loop import train
from pipeline.train.prepare import prepare_training

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """Headline numbers (``summary``), full metrics, and where the report was written."""

    summary: dict[str, Any]
    metrics: dict[str, Any]
    out_dir: Path


def _one_shot_split(identities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of (gallery: first image of each multi-image person, known probes, unknown probes)."""
    counts = pd.Series(identities).value_counts()
    gallery, known, unknown, seen = [], [], [], set()
    for i, ident in enumerate(identities):
        if counts[ident] < 2:
            unknown.append(i)
        elif ident not in seen:
            seen.add(ident)
            gallery.append(i)
        else:
            known.append(i)
    return np.array(gallery, dtype=np.int64), np.array(known, dtype=np.int64), np.array(unknown, dtype=np.int64)


@dataclass
class OneShot:
    """The demo protocol's one-shot results: ``summary`` numbers and the identify / verify tables."""

    summary: dict[str, Any]
    identify: pd.DataFrame
    verify: pd.DataFrame


def one_shot(model: LoadedModel, ev: ModelEvaluation, root: Path, store_dir: Path, model_path: Path, *, seed: int = 0) -> OneShot:
    """The demo protocol on evaluated dev people (``ev``, from `evaluate_model`): ONE image (the first) of each
    person with >= 2 images is enrolled in a new gallery store at ``store_dir``; their other images are the known
    probes (rank-1 / rank-5, open-set identification rate at the stored threshold, and 1:1 claims of their own
    and of a random other identity); single-image people are unknown probes (false alarm rate)."""
    dev, emb = ev.eval_set, ev.embeddings
    gallery, known, unknown = _one_shot_split(dev.identities)
    store = GalleryStore.create(store_dir, model_version=model.model_version, embedding_dim=emb.shape[1],
                                threshold=model.threshold, model_path=str(model_path))
    paths = dev.image_paths
    shas = [file_digest(root / p) for p in paths[gallery]]
    store.enroll(emb[gallery], dev.identities[gallery].tolist(), paths[gallery].tolist(), shas,
                 model_version=model.model_version)

    probes = np.concatenate([known, unknown])
    t_q = time.monotonic()
    ident = store.identify(emb[probes], model_version=model.model_version, top_k=5)
    identify_s = time.monotonic() - t_q
    ident["image_path"] = paths[probes][ident["query_index"].to_numpy()]
    ident["true_identity"] = dev.identities[probes][ident["query_index"].to_numpy()]
    top1 = ident[ident["rank"] == 1].set_index("query_index").sort_index()
    is_known = np.arange(len(probes)) < len(known)
    truth = dev.identities[probes]
    rank1 = float((top1["identity"].to_numpy()[is_known] == truth[is_known]).mean())
    in_top5 = ident.groupby("query_index").apply(lambda g: bool((g["identity"] == g["true_identity"]).any()),
                                                 include_groups=False).sort_index().to_numpy()
    dir_at_thr = float((top1["decision"].to_numpy()[is_known] == truth[is_known]).mean())
    false_alarm = float((top1["decision"].to_numpy()[~is_known] != "unknown").mean()) if (~is_known).any() else float("nan")

    # 1:1 claims: every known probe claims its own identity and one other enrolled identity
    rng = np.random.default_rng(seed)
    enrolled = dev.identities[gallery]
    impostor_claims = [enrolled[(np.flatnonzero(enrolled == t)[0] + 1 + rng.integers(len(enrolled) - 1)) % len(enrolled)]
                       for t in truth[is_known]]
    claims = list(truth[is_known]) + impostor_claims
    ver = store.verify(np.concatenate([emb[known], emb[known]]), claims, model_version=model.model_version)
    ver["image_path"] = np.concatenate([paths[known], paths[known]])
    genuine = np.arange(len(ver)) < len(known)
    verify_acc = float((ver["match"].to_numpy() == genuine).mean())

    summary = {
        "enrolled_people": len(gallery),
        "known_probes": len(known),
        "unknown_probes": len(unknown),
        "one_shot_rank1": rank1,
        "one_shot_rank5": float(in_top5[is_known].mean()),
        "open_set_dir": dir_at_thr,
        "open_set_false_alarm": false_alarm,
        "verify_accuracy": verify_acc,
        "identify_queries_per_s": len(probes) / max(identify_s, 1e-9),
    }
    return OneShot(summary, ident, ver)


def run_demo(data_dir: Path, out_dir: Path, cfg: Config, *, on_step: Any = None,
             with_teacher: Any = None) -> DemoResult:
    """Run the whole job; write ``out_dir/{model,gallery,report}``. Returns the headline numbers."""
    root, pairs = lfw_layout(data_dir)
    if pairs is None:
        raise DataError(f"{data_dir}: the demo needs a pairs file (lfw_pairs_dev.txt or pairs.txt) beside lfw/")
    report = out_dir / "report"
    store_dir = out_dir / "gallery"
    # the demo owns out_dir: a gallery left by an earlier demo run is replaced (checked before training,
    # so a path that is something else fails in a second, not after the training budget)
    if store_dir.exists() and any(store_dir.iterdir()):
        if not (store_dir / "manifest.json").is_file():
            raise DataError(f"{store_dir} exists and is not a gallery store left by an earlier demo; "
                            "choose another --out")
        log.info("replacing the gallery of an earlier demo run in %s", store_dir)
        shutil.rmtree(store_dir)
    report.mkdir(parents=True, exist_ok=True)

    t_prep = time.monotonic()
    data = prepare_training(root, pairs, cfg)
    if with_teacher is not None:  # the caller's way of attaching the teacher (e.g. with a progress bar)
        data = with_teacher(data)
    prep_s = time.monotonic() - t_prep
    result = train(cfg, data, out_dir / "model", on_step=on_step)
    model = load_model(out_dir / "model", device=cfg.train.device)

    if not data.split.dev:
        raise DataError("no dev people: the pairs file needs the configured data.dev_folds")
    ev = evaluate_model(model, data.table, data.split.dev, data.split.dev_pairs, name="dev", fars=cfg.eval.target_fars)
    dev_metrics = ev.metrics

    shot = one_shot(model, ev, root, store_dir, (out_dir / "model").resolve(), seed=cfg.train.seed)
    ident, ver = shot.identify, shot.verify

    write_parquet_atomic(ident, report / "identify.parquet")
    write_parquet_atomic(ver, report / "verify.parquet")
    write_evaluation_plots(ev, report / "roc.png", report / "scores.png", default_far=cfg.eval.default_far, label="dev")

    pairs_m = dev_metrics["pairs"]
    far_key = f"{cfg.eval.default_far:g}"
    summary = {
        "model_version": model.model_version,
        "train_minutes": round(result.seconds / 60, 2),
        "train_people": len(data.class_names),
        "dev_pairs": pairs_m["pairs"],
        "pair_accuracy": pairs_m["accuracy"],
        "pair_accuracy_std": pairs_m["accuracy_std"],
        "auc": pairs_m["auc"],
        "eer": pairs_m["eer"],
        f"tar@far={far_key}": dev_metrics["all_pairs"]["tar_at_far"][far_key],
        "threshold": model.threshold,
        "achieved_far": dev_metrics["achieved_far"][f"far={far_key}"],
        **shot.summary,
        "embed_images_per_s": dev_metrics["images_per_s"],
        "prep_seconds": round(prep_s, 1),
    }
    metrics = {"summary": summary, "dev": dev_metrics, "val": model.meta["metrics"]["val"],
               "training": model.meta["training"]}
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return DemoResult(summary, metrics, out_dir)
