"""The ``facepipe`` command line. ``main(argv) -> int`` so tests call it in-process.

Argument parsing lives here only: commands turn the namespace into plain library calls.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from pipeline.core.errors import FacepipeError
from pipeline.data import lfw

EPILOG = """examples:
  facepipe demo --data ../shared/data --minutes 3
  facepipe train --data DATA/lfw --pairs DATA/lfw_pairs_dev.txt --out runs/model
  facepipe evaluate --model runs/model --data DATA/lfw --pairs DATA/lfw_pairs_dev.txt
  facepipe enroll --model runs/model --index runs/gallery --images new_people/
  facepipe identify --index runs/gallery --probes probes/ --out hits.parquet
  facepipe verify --index runs/gallery --probes claims.csv --out claims.parquet
Run `facepipe COMMAND --help` for the options of one command."""


DEMO_MINUTES = 3.0  # the demo's training budget unless --minutes says otherwise


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (sections: data, model, loss, train, distill, eval)")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append",
                   help="override one config value, e.g. --set model.backbone=resnet18 (repeatable)")
    p.add_argument("--minutes", type=float, help="training time budget in minutes (train.minutes)")
    _add_device(p)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="auto|cpu|cuda|mps",
                   help="where the network runs (default: auto = CUDA, then MPS, then CPU; train.device for training)")


def build_parser() -> argparse.ArgumentParser:
    m = "pipeline.cli.model_cmds"
    parser = argparse.ArgumentParser(
        prog="facepipe", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Siamese face verification: train an encoder, enrol a gallery, answer 1:1 and 1:N queries.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job end to end on LFW: train, calibrate, enrol, query, report")
    p.add_argument("--data", metavar="DIR", help="folder holding lfw/ and a pairs file (default: $FACEPIPE_DATA)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)")
    _add_config(p)
    p.set_defaults(func=f"{m}:cmd_demo", minutes=DEMO_MINUTES)  # --minutes defaults to 3 here

    p = sub.add_parser("train", help="train an encoder from identity folders or a manifest")
    p.add_argument("--data", required=True, metavar="DIR|MANIFEST", help="ROOT/<identity>/<image> or CSV/Parquet")
    p.add_argument("--pairs", metavar="FILE", help="LFW pairs file: its dev folds are held out (never trained on)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="where the model artefact is written")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint")
    _add_config(p)
    p.set_defaults(func=f"{m}:cmd_train")

    p = sub.add_parser("evaluate", help="LFW-protocol metrics, ROC/DET and score plots")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    p.add_argument("--data", required=True, metavar="DIR", help="the LFW identity-folder root")
    p.add_argument("--pairs", required=True, metavar="FILE")
    p.add_argument("--folds", help="comma-separated folds, or 'all' (default: the model's held-out dev folds)")
    p.add_argument("--out", metavar="metrics.json", help="default: MODEL_DIR/eval/metrics.json")
    _add_device(p)
    p.set_defaults(func=f"{m}:cmd_evaluate")

    p = sub.add_parser("embed", help="batch embedding to Parquet")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    p.add_argument("--images", required=True, metavar="DIR|MANIFEST")
    p.add_argument("--out", required=True, metavar="FILE.parquet")
    p.add_argument("--chunk-size", type=int, default=2048, help="images decoded at once (bounds memory)")
    _add_device(p)
    p.set_defaults(func=f"{m}:cmd_embed")

    p = sub.add_parser("fetch-lfw", help="download + verify + extract LFW deep-funneled (needs internet)")
    p.add_argument("--dest", required=True, metavar="DIR")
    p.add_argument("--url", default=lfw.LFW_DEEPFUNNELED_URL)
    p.add_argument("--md5", default=lfw.LFW_DEEPFUNNELED_MD5)
    p.add_argument("--pairs-url", default=lfw.LFW_PAIRS_URL)
    p.add_argument("--pairs-md5", default=lfw.LFW_PAIRS_MD5)
    p.add_argument("--no-verify", action="store_true", help="skip the MD5 check (not recommended)")
    p.set_defaults(func=f"{m}:cmd_fetch_lfw")

    _add_store_commands(sub)

    p = sub.add_parser("flow", help="run a Prefect flow (retrain, enroll, lookup, rollback, deploy) in a subprocess",
                       add_help=False)
    p.add_argument("flow_name", choices=["retrain", "enroll", "lookup", "rollback", "forget", "deploy"])
    p.add_argument("flow_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_flow)

    for sp in sub.choices.values():
        if sp.prog.split()[-1] != "flow":
            _add_common(sp)
    return parser


def _add_store_commands(sub: argparse._SubParsersAction) -> None:
    s = "pipeline.cli.store_cmds"
    p = sub.add_parser("enroll", help="add identities to a gallery (one image per person is enough)")
    p.add_argument("--model", metavar="MODEL_DIR", help="required for a new gallery; default: the gallery's model")
    p.add_argument("--index", required=True, metavar="INDEX_DIR")
    p.add_argument("--images", required=True, metavar="DIR|MANIFEST",
                   help="ROOT/<identity>/<image>, or CSV/Parquet with image_path, identity")
    p.add_argument("--rejects", default="enroll-rejects.parquet", metavar="FILE.parquet",
                   help="where bad images and duplicates are listed (default: ./enroll-rejects.parquet)")
    p.add_argument("--chunk-size", type=int, default=1024, help="images per atomic commit")
    p.add_argument("--audit-log", metavar="FILE", help="default: $FACEPIPE_AUDIT_LOG, else INDEX_DIR.audit.jsonl")
    _add_face_options(p)
    p.set_defaults(func=f"{s}:cmd_enroll")

    p = sub.add_parser("verify", help="1:1: is each probe the identity it claims?")
    p.add_argument("--index", required=True, metavar="INDEX_DIR")
    p.add_argument("--probes", required=True, metavar="FILE",
                   help="CSV/Parquet with image_path, claimed_identity (or an `embed` output + claimed_identity)")
    p.add_argument("--out", required=True, metavar="FILE.parquet")
    p.add_argument("--model", metavar="MODEL_DIR", help="default: the model recorded in the gallery")
    p.add_argument("--threshold", type=float, help="cosine threshold (default: the model's, calibrated at its FAR)")
    p.add_argument("--chunk-size", type=int, default=2048)
    _add_face_options(p)
    p.set_defaults(func=f"{s}:cmd_verify")

    p = sub.add_parser("identify", help="1:N: who is each probe? (open-set: 'unknown' below the threshold)")
    p.add_argument("--index", required=True, metavar="INDEX_DIR")
    p.add_argument("--probes", required=True, metavar="DIR|FILE")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates per probe (default 5)")
    p.add_argument("--out", required=True, metavar="FILE.parquet")
    p.add_argument("--model", metavar="MODEL_DIR", help="default: the model recorded in the gallery")
    p.add_argument("--threshold", type=float, help="cosine threshold (default: the model's, calibrated at its FAR)")
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--report", metavar="DIR", help="also write a review page DIR/index.html: each probe's aligned "
                                                   "face beside its top-k gallery faces, rejects and unknowns first")
    _add_face_options(p)
    p.set_defaults(func=f"{s}:cmd_identify")

    p = sub.add_parser("remove", help="delete an identity everywhere (index, metadata, embeddings)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", metavar="INDEX_DIR", help="a gallery store")
    where.add_argument("--registry", metavar="DIR", help="a model registry: the live store, every store kept for "
                                                         "rollback, the pinned evaluation set and the caches "
                                                         "(runs the forget flow)")
    p.add_argument("--identity", required=True, metavar="NAME")
    p.add_argument("--audit-log", metavar="FILE", help="default: $FACEPIPE_AUDIT_LOG, else INDEX_DIR.audit.jsonl")
    p.set_defaults(func=f"{s}:cmd_remove")

    p = sub.add_parser("audit", help="show a store's audit trail (enrol, remove), or --verify its hash chain")
    p.add_argument("--index", metavar="INDEX_DIR", help="the store whose trail to read (INDEX_DIR.audit.jsonl)")
    p.add_argument("--log", metavar="FILE", help="or: the audit log file itself")
    p.add_argument("--verify", action="store_true", help="check the chain and the head: exit 1 if edited or cut")
    p.set_defaults(func=f"{s}:cmd_audit")

    p = sub.add_parser("info", help="describe a gallery store")
    p.add_argument("index", metavar="INDEX_DIR")
    p.add_argument("--check", action="store_true", help="also verify every file's checksum")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=f"{s}:cmd_info")


def _add_face_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aligned", action="store_true",
                   help="the images are template-aligned face crops already: skip detection (blur is still measured)")
    p.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                   help="a face limit for this call (repeatable): min_interocular_px, min_score, min_sharpness, "
                        "max_abs_yaw_deg, dominance_margin, centrality_weight (defaults: pipeline/faces/policy.py)")


def cmd_flow(args: argparse.Namespace, out) -> int:
    """Flows live in the ``flows`` package (Prefect); the library never imports it, so run it as a module."""
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **os.environ}
    return subprocess.call([sys.executable, "-m", f"flows.{args.flow_name}", *args.flow_args], env=env)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one clear line and return 2."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from pipeline.cli.common import configure_logging

    configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))

    def out(msg: str) -> None:
        print(msg, flush=True)

    try:
        func = args.func
        if isinstance(func, str):  # commands import torch / faiss lazily, so --help stays fast
            module, name = func.split(":")
            func = getattr(importlib.import_module(module), name)
        return int(func(args, out) or 0)
    except FacepipeError as exc:  # the one error tree (pipeline.core.errors), store errors included
        logging.getLogger(__name__).debug("user error", exc_info=True)
        print(f"facepipe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
