#!/usr/bin/env bash
# On nvidia-h200-x2 (2 H200, 32 cores; device tool): the scaling benchmark of issue 12 §4.
# docs/scaling.json-style output to $OUT/scaling.json (rewritten after every point, "partial": true
# until the last), the table and log to $OUT/scaling.log. Installs nothing: a call whose host lacks a
# package installs it into /tmp/site first (see tools/gpu/h200_rl.sh).
#   bash tools/gpu/x2_scaling.sh [RLLIB_BASELINE_JSON] [extra benchmarks/scaling.py flags]
# RLLIB_BASELINE_JSON: a benchmarks/rllib_baseline.py result of the same host (its run directory's
# rllib_baseline.json) for the rllib_* / matrl_* keys; without it they are null.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
rllib=()
if [[ $# -gt 0 && -f "$1" ]]; then rllib=(--rllib-json "$1"); shift; fi
python benchmarks/scaling.py --reward-workers 4,8,16,28 --gpu-reward-workers 0,1,2 --rollout-workers 1,2 \
  --modes sync,async --res 256 --device cuda --host-label "nvidia-h200-x2 (2 x H200, $(nproc) CPUs)" \
  --work runs/scaling --json "$OUT/scaling.json" ${rllib[@]+"${rllib[@]}"} "$@" 2>&1 \
  | grep -v "Warning\|warn(" | tee "$OUT/scaling.log"
exit "${PIPESTATUS[0]}"
