"""Untrained SFace-shaped students: where each starts (dev-pair AUC) and how fast it runs in OpenCV DNN.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/factor_probe.py --data ../shared/data \\
        --out bench/results/factor_probe_session16.json

A student that starts near the teacher has less to learn in the training budget. Each shape (stem at stride 2,
112 px) is built with SFace's inherited weights (`pipeline.model.inherit`): blocks left out (``drop``) and/or
pointwise convolutions factored (``ranks``, one per SFace block, 0 = full; every layer on the full network's
inputs as the product does, or in sequence with ``"sequential": true``) on 512 LFW faces of people
outside the dev folds (the product factors on training faces, `pipeline.train.loop.calibration_faces`). Per shape:

* ``start``: ROC AUC and best accuracy on the dev pairs (folds 6-7 of the pairs file, 1,200 pairs), no training,
  with the teacher's BatchNorm statistics; and the AUC once they are re-estimated on the calibration faces
  (``start_dev_auc_batch_statistics``: training runs on batch statistics and moves the running ones there);
* ``speed``: images/s in OpenCV DNN (BatchNorm folded, exported the product's way, batches of 32) against the
  teacher's adapter (OpenCV DNN, batches of 16) on 512 of the same aligned faces, both on one thread per core,
  rows interleaved, median of ``--rounds``; the largest torch-vs-OpenCV embedding difference;
* ``factored_norm_vs_teacher_max``: the largest || A B || / || W || over the factored layers (W: the teacher's).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline  # noqa: E402,F401  (runtime tuning)
from timing import interleaved  # noqa: E402
from pipeline.core.config import cache_dir  # noqa: E402
from pipeline.core.env import set_threads  # noqa: E402
from pipeline.data.pairs import pair_people, parse_pairs  # noqa: E402
from pipeline.evaluate.metrics import best_accuracy_threshold, roc_auc  # noqa: E402
from pipeline.faces.crop_cache import AlignedCropCache  # noqa: E402
from pipeline.faces.loader import FacePreprocessing, build_aligner, load_faces  # noqa: E402
from pipeline.model.embed import to_input  # noqa: E402
from pipeline.model.inherit import blocks_of  # noqa: E402
from pipeline.model.encoder import build_encoder  # noqa: E402
from pipeline.model.fold import inference_copy  # noqa: E402
from pipeline.model.runtime import OpenCVRunner, export_onnx  # noqa: E402
from pipeline.model.teachers import create_teacher  # noqa: E402

#: the shapes session 16 compared: the default (all blocks, full rank), blocks 6-10 left out (session 14), and
#: factorisations from strong to mild; ranks M and F also factored in sequence (`factor_pointwise`'s option)
SHAPES = [
    {"name": "full"},
    {"name": "drop 6-10", "drop": [6, 7, 8, 9, 10]},
    {"name": "ranks M (trained, session 15)", "ranks": [0, 0, 32, 48, 64, 96, 80, 80, 80, 80, 80, 160, 160]},
    {"name": "ranks M, in sequence", "ranks": [0, 0, 32, 48, 64, 96, 80, 80, 80, 80, 80, 160, 160],
     "sequential": True},
    {"name": "ranks E", "ranks": [0, 0, 32, 48, 64, 96, 96, 96, 96, 96, 96, 192, 192]},
    {"name": "ranks F (trained, session 16)", "ranks": [0, 0, 32, 0, 64, 0, 96, 96, 96, 96, 96, 0, 192]},
    {"name": "ranks F, in sequence", "ranks": [0, 0, 32, 0, 64, 0, 96, 96, 96, 96, 96, 0, 192], "sequential": True},
    {"name": "ranks H", "ranks": [0, 0, 32, 48, 64, 96, 128, 128, 128, 128, 128, 256, 256]},
    {"name": "ranks A", "ranks": [0, 0, 32, 0, 64, 0, 128, 128, 128, 128, 128, 0, 256]},
]
PX, CALIB, BATCH = 112, 512, 32


def conv_macs(enc: nn.Module, px: int) -> float:
    """Millions of multiply-adds in the convolutions and the Linear layer, one face."""
    total = 0

    def hook(m: nn.Module, _i: tuple, o: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += o[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in enc.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        enc(torch.zeros(1, 3, px, px))
    for h in hs:
        h.remove()
    return total / 1e6


def build(shape: dict, calib: torch.Tensor) -> nn.Module:
    from pipeline.model.inherit import factor_pointwise, inherit_sface, ranked_blocks

    drop, ranks = list(shape.get("drop", [])), list(shape.get("ranks", []))
    sequential = bool(shape.get("sequential")) and any(ranks)  # each layer on the factored layers' outputs
    arch = {"shape": "sface", "stem_stride": 2, "drop_blocks": drop,
            **({"pw_ranks": ranks} if any(ranks) and not sequential else {})}
    enc = build_encoder("mobilenetv1_100", 128, head="flatten", input_px=PX, arch=arch)
    inherit_sface(enc, drop_blocks=tuple(drop), calib=calib)
    if sequential:
        factor_pointwise(enc, ranked_blocks(enc, ranks, drop), calib, sequential=True)
    return enc.eval()


@torch.no_grad()
def batch_statistics(enc: nn.Module, calib: torch.Tensor) -> nn.Module:
    """A copy whose BatchNorm statistics are re-estimated on the calibration faces (what training's first steps
    move them to: the teacher's statistics were measured at stem stride 1)."""
    enc = copy.deepcopy(enc)
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    enc.train()
    for s in range(0, len(calib), 64):
        enc(calib[s: s + 64])
    return enc.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder with lfw/ and lfw_pairs_dev.txt")
    ap.add_argument("--shapes", help="JSON list of {name, drop?, ranks?, sequential?}; default: the session-16 list")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds; 0: start AUCs only")
    ap.add_argument("--threads", type=int, default=0, help="default: one per core")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    shapes = json.loads(args.shapes) if args.shapes else SHAPES

    pairs = parse_pairs(args.data / "lfw_pairs_dev.txt")
    dev = pairs[pairs["fold"].isin([6, 7])]
    dev_people = pair_people(dev)
    images = sorted(set(dev["path1"]) | set(dev["path2"]))
    others = sorted(str(p) for p in (args.data / "lfw").glob("*/*.jpg") if p.parent.name not in dev_people)
    calib_paths = list(np.random.default_rng(0).choice(others, CALIB, replace=False))
    aligner = build_aligner("yunet", PX)
    prep = FacePreprocessing(1.0, PX, aligner, cache=AlignedCropCache(cache_dir() / "aligned"))
    dev_faces = load_faces([str(args.data / "lfw" / p) for p in images], None, prep)
    calib = to_input(load_faces(calib_paths, None, prep).images)
    threads = args.threads or len(os.sched_getaffinity(0))
    set_threads(threads)  # after the aligner, which leaves OpenCV on one thread
    row_of = {images[int(k)]: i for i, k in enumerate(dev_faces.keep)}
    both = [(row_of[a], row_of[b], s) for a, b, s in zip(dev["path1"], dev["path2"], dev["same"])
            if a in row_of and b in row_of]
    xd = to_input(dev_faces.images)

    results, runners = [], {}
    labels = np.array([bool(s) for _, _, s in both])

    def dev_auc(enc: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            e = nn.functional.normalize(torch.cat([enc(xd[s: s + 64]) for s in range(0, len(xd), 64)]), dim=1).numpy()
        return e, np.array([float(e[i] @ e[j]) for i, j, _ in both])

    teacher_pw = [b.conv_pw.weight[:, :, 0, 0] for b in blocks_of(build({"name": "full"}, calib).backbone)]
    for shape in shapes:
        enc = build(shape, calib)
        e, scores = dev_auc(enc)
        scores_bs = dev_auc(batch_statistics(enc, calib))[1]
        kept = [i for i in range(len(teacher_pw)) if i not in shape.get("drop", [])]
        with torch.no_grad():
            growth = [float(torch.linalg.norm(b.conv_pw[1].weight[:, :, 0, 0] @ b.conv_pw[0].weight[:, :, 0, 0])
                            / torch.linalg.norm(teacher_pw[i])) for b, i in zip(blocks_of(enc.backbone), kept)
                      if isinstance(b.conv_pw, nn.Sequential)]
        x = xd[:512].contiguous()
        runner = OpenCVRunner(export_onnx(inference_copy(enc, x[:4]), x[:4]))
        got = nn.functional.normalize(runner(x[:64]), dim=1).numpy()
        runners[shape["name"]] = runner
        results.append({**shape, "conv_linear_mmacs": round(conv_macs(enc, PX), 1),
                        "start_dev_auc": round(roc_auc(scores, labels), 4),
                        "start_dev_accuracy": round(best_accuracy_threshold(scores, labels)[1], 4),
                        "start_dev_auc_batch_statistics": round(roc_auc(scores_bs, labels), 4),
                        "factored_norm_vs_teacher_max": round(max(growth), 2) if growth else None,
                        "opencv_vs_torch_max_diff": float(np.abs(got - e[:64]).max())})
        print(json.dumps(results[-1]), flush=True)

    if args.rounds == 0:  # start AUCs only
        return 0
    teacher = create_teacher("sface")
    crops = dev_faces.images[:512]
    x = xd[:512].contiguous()
    rows = {"teacher": lambda: teacher.embed(crops)}
    for name, r in runners.items():
        rows[name] = lambda r=r: [r(x[s: s + BATCH]) for s in range(0, len(x), BATCH)]
    load_before = os.getloadavg()
    med = {k: len(x) / t for k, t in interleaved(rows, args.rounds).items()}
    for res in results:
        res["images_per_s"] = round(med[res["name"]], 1)
        res["vs_teacher"] = round(med[res["name"]] / med["teacher"], 2)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "threads": threads, "rounds": args.rounds,
              "dev_pairs": len(both), "calibration_faces": len(calib), "load_before": load_before,
              "load_after": os.getloadavg(), "teacher_images_per_s": round(med["teacher"], 1), "shapes": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
