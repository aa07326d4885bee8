#!/usr/bin/env bash
# The layout change (commit e9f8c16) changed no behaviour: the same seeded 300-step training before it (b8e52fd)
# and after it gives byte-identical weights and the same dev metrics. Runs each commit from a git worktree with
# this checkout's virtualenv (the worktree's packages come first on sys.path) and compares.
# usage: scripts/layout_equivalence.sh [DATA_DIR]   (default: $FACEPIPE_DATA)   ~4 minutes on 2 cores
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-${FACEPIPE_DATA:?set FACEPIPE_DATA or pass the data directory}}
py="$repo/.venv/bin/python"
export OMP_WAIT_POLICY=PASSIVE
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/before" 2>/dev/null; git -C "$repo" worktree remove --force "$work/after" 2>/dev/null; rm -rf "$work"' EXIT
for side in before:b8e52fd after:e9f8c16; do
  name=${side%%:*} commit=${side#*:}
  git -C "$repo" worktree add --detach "$work/$name" "$commit" >/dev/null 2>&1
  (cd "$work/$name" \
   && "$py" -m pipeline.cli train --data "$data/lfw" --pairs "$data/lfw_pairs_dev.txt" --out "$work/model_$name" \
        --minutes 30 --set model.backbone=test_resnet --set train.member_shares= --set train.max_steps=300 \
        --set train.seed=0 >"$work/$name.train.log" 2>&1 \
   && "$py" -m pipeline.cli evaluate --model "$work/model_$name" --data "$data/lfw" \
        --pairs "$data/lfw_pairs_dev.txt" >"$work/$name.eval.log" 2>&1)
  echo "== $name ($commit)"; grep -E "saved to|steps" "$work/$name.train.log"; grep -vE "^wrote" "$work/$name.eval.log"
  sha256sum "$work/model_$name/model.safetensors" | cut -c1-16
done
if cmp -s "$work/model_before/model.safetensors" "$work/model_after/model.safetensors" \
   && diff <(grep -vE "^wrote|images/s" "$work/before.eval.log") <(grep -vE "^wrote|images/s" "$work/after.eval.log") >/dev/null
then echo "SAME: identical weights and dev metrics"; else echo "DIFFERENT"; exit 1; fi
