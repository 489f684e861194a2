#!/usr/bin/env bash
# On an H200 host (device tool): online pre-training at 256² for SECONDS, checkpoint and metrics to $OUT.
#   bash tools/gpu/h200_pretrain.sh SECONDS [extra --set ...]
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
seconds=$1; shift
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python -m matrl.cli pretrain --config online --out runs/online --set train.steps=2500 \
  --set train.time_limit_s="$seconds" --set train.eval_every=250 "$@" 2>&1 | tee "$OUT/pretrain.log" | grep -v Warning
ck=$(python -c "from policy.checkpoint import latest_checkpoint; print(latest_checkpoint('runs/online/checkpoints'))")
echo "checkpoint: $ck"
tar czf "$OUT/online_ck.tgz" -C "$(dirname "$ck")" "$(basename "$ck")" && cp runs/online/metrics.jsonl "$OUT/pretrain_metrics.jsonl"
