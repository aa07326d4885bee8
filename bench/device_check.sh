#!/usr/bin/env bash
# Check the accelerator path on a machine with a GPU (CUDA or Apple MPS): a 2-minute train, an embed and an
# evaluate with --device auto, then assert that the work ran on the accelerator (model.json records the training
# device; a probe embeds on the device and compares with the CPU).
# Usage: bash bench/device_check.sh DATA_DIR [OUT_DIR]     (DATA_DIR holds lfw/ and lfw_pairs_dev.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:?usage: bench/device_check.sh DATA_DIR [OUT_DIR]}"
OUT="${2:-runs/device_check}"
PY=.venv/bin/python
export OMP_WAIT_POLICY=PASSIVE PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
DEVICE=$($PY -c "from pipeline.core.env import resolve_device; print(resolve_device('auto').type)")
if [ "$DEVICE" = "cpu" ]; then
  echo "device_check: no accelerator on this machine (torch sees neither CUDA nor MPS)" >&2
  exit 1
fi
echo "device_check: accelerator $DEVICE"
rm -rf "$OUT" && mkdir -p "$OUT"
.venv/bin/facepipe train --data "$DATA/lfw" --pairs "$DATA/lfw_pairs_dev.txt" --device auto --minutes 2 \
  --set model.backbone=resnet10t --set train.member_shares= --set data.image_size_px=112 \
  --set data.face_detector=yunet --set data.crop_fraction=1.0 --out "$OUT/model"
.venv/bin/facepipe embed --model "$OUT/model" --images "$DATA/lfw" --device auto --out "$OUT/embed.parquet" -q
.venv/bin/facepipe evaluate --model "$OUT/model" --data "$DATA/lfw" --pairs "$DATA/lfw_pairs_dev.txt" \
  --device auto --out "$OUT/metrics.json" -q
$PY - "$OUT" "$DEVICE" <<'PY'
import json, sys
import numpy as np, torch
from pipeline.model.artifacts import load_model
from pipeline.model.embed import embed_array
out, device = sys.argv[1], sys.argv[2]
meta = json.load(open(f"{out}/model/model.json"))
assert meta["training"]["device"].startswith(device), f"training ran on {meta['training']['device']}, not {device}"
assert meta["training"]["steps"] > 0
images = np.random.default_rng(0).integers(0, 255, (64, 112, 112, 3), dtype=np.uint8)
on_dev = load_model(f"{out}/model", device="auto")
assert next(on_dev.encoder.parameters()).device.type == device
cpu = load_model(f"{out}/model", device="cpu")
a, b = embed_array(on_dev.encoder, images), embed_array(cpu.encoder, images)
cos = float((a * b).sum(axis=1).min())
assert cos > 0.999, f"device and CPU embeddings differ (min cosine {cos:.5f})"
metrics = json.load(open(f"{out}/metrics.json"))
print(f"device_check: OK on {device}: {meta['training']['steps']} steps, dev AUC {metrics['pairs']['auc']:.4f}, "
      f"device/CPU embedding cosine >= {cos:.5f}")
PY
