#!/usr/bin/env bash
# Reproduces the flow runs shown in README.md ("Flows") against a registry with a live model, e.g. the one
# `python -m flows.retrain --registry runs/registry --data ../shared/data/lfw --pairs ../shared/data/lfw_pairs_dev.txt`
# made. Usage: bash scripts/readme_flows.sh [DATA_DIR] [REGISTRY]
set -uo pipefail
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 OMP_WAIT_POLICY=PASSIVE
DATA="${1:-${FACEPIPE_DATA:-../shared/data}}"
REG="$(cd "${2:-runs/registry}" && pwd)"
PY="$(pwd)/.venv/bin/python"
LFW="$(cd "$DATA/lfw" && pwd)"
W="$(mktemp -d)"
cd "$(dirname "$0")/.."
source scripts/readme_inputs.sh
write_readme_inputs "$W" "$LFW"
run() { echo "\$ python -m flows.$*" | sed "s#$W/##g; s#$REG#registry#g"; "$PY" -m "flows.$@" 2>&1 \
          | grep -v "Targets are not supported\|Stopping temporary server\|WARNING | pipeline.faces.loader" | sed "s#$W/##g; s#$LFW/##g; s#$REG#registry#g"; echo; }
run enroll --registry "$REG" --images "$W/new_people.csv" --rejects "$W/rejects.parquet"
run lookup --registry "$REG" --probes "$W/claims.csv" --mode verify --out "$W/claims.parquet"
"$PY" -c "import pandas as pd, sys; d = pd.read_parquet(sys.argv[1]); d['image_path'] = d['image_path'].str.split('/').str[-1]; print(d[['image_path', 'claimed_identity', 'score', 'threshold', 'match']].round(4).to_string(index=False))" "$W/claims.parquet"
echo
run forget --registry "$REG" --identity Bill_Clinton
run rollback --registry "$REG"
rm -rf "$W"
