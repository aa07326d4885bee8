#!/usr/bin/env bash
# Create .venv and install facepipe with its test extras, pinned by constraints.txt.
# torch 2.14.1 + torchvision 0.29.1 come from this machine's local wheel cache when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev,dlib]'
.venv/bin/python -c "import torch, timm, faiss, prefect, cv2; print('facepipe environment ready: torch', torch.__version__)"
