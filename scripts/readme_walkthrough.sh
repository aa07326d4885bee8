#!/usr/bin/env bash
# Reproduces the CLI walkthrough shown in README.md, using the model the demo trained (runs/demo/model).
# Usage: bash scripts/readme_walkthrough.sh [DATA_DIR] [MODEL_DIR]
set -uo pipefail
DATA="${1:-${FACEPIPE_DATA:-../shared/data}}"
MODEL="$(cd "${2:-runs/demo/model}" && pwd)"
FP="$(pwd)/.venv/bin/facepipe"
LFW="$(cd "$DATA/lfw" && pwd)"
W="$(mktemp -d)"
cd "$W"
source "$(dirname "$FP")/../../scripts/readme_inputs.sh"
write_readme_inputs "$W" "$LFW"
printf "image_path\n$LFW/Ariel_Sharon/Ariel_Sharon_0003.jpg\n$LFW/Bill_Clinton/Bill_Clinton_0003.jpg\n$LFW/Allen_Iverson/Allen_Iverson_0001.jpg\n" > probes.csv
run() { echo "\$ facepipe $*"; "$FP" "$@" 2>&1 | grep -v "Targets are not supported\|WARNING pipeline.faces.loader" \
          | sed "s#$W/##g; s#$LFW/##g"; echo; }
show() { "$(dirname "$FP")/python" -c "import pandas as pd, sys; pd.set_option('display.width', 160); d = pd.read_parquet(sys.argv[1]); d['image_path'] = d['image_path'].str.split('/').str[-1]; print(d.drop(columns=[c for c in ('model_version', 'face_score', 'interocular_px', 'sharpness', 'yaw_deg') if c in d]).round(4).to_string(index=False))" "$1"; echo; }
run enroll --model "$MODEL" --index gallery --images new_people.csv
run enroll --index gallery --images new_people.csv --rejects again.parquet
run verify --index gallery --probes claims.csv --out claims.parquet
show claims.parquet
run identify --index gallery --probes probes.csv --top-k 2 --out hits.parquet
show hits.parquet
run info gallery
run remove --index gallery --identity Bill_Clinton
run identify --index gallery --probes missing.csv --out x.parquet
rm -rf "$W"
