#!/usr/bin/env bash
# On an H200 host (device tool), one call of at most ~9 minutes: the single-GPU measurements of
# issue 12 §1 (reward path) and issue 13 (infer latency), and a 2-iteration smoke of the h200 RL
# preset with one GPU reward actor (decides whether the long RL call scores on the GPU). Each step has
# its own timeout, so a slow one cannot take the others' time; logs and JSON to $OUT.
#   bash tools/gpu/h200_bench.sh            (after the install steps of tools/gpu/README in docs/rl.md)
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
nproc >> "$OUT/gpu.txt"
ck=$(python -c "from policy.checkpoint import latest_checkpoint; print(latest_checkpoint('runs/online/checkpoints'))")
echo "checkpoint: $ck"
quiet() { grep -v "Warning\|warn(" ; }
# 1. RL smoke: learner 0.35 + rollout 0.35 + one GPU reward actor 0.3 of the GPU, 12 CPU reward workers.
timeout 200 python -m matrl.cli train --config h200 --out runs/smoke --no-progress --set init="$ck" \
  --set iterations=3 --set validation.every=100 --set validation.targets=8 --set reward.workers=12 \
  --set reward.gpu_workers=1 --set reward.num_gpus=0.3 --set learner.num_gpus=0.35 --set rollout.num_gpus=0.35 \
  2>&1 | quiet | tail -60 > "$OUT/smoke.log"; echo "smoke rc ${PIPESTATUS[0]}" >> "$OUT/smoke.log"
cp runs/smoke/summary.json "$OUT/smoke_summary.json" 2>/dev/null
tail -5 "$OUT/smoke.log"
# 2. matrl infer latency, 5 structures x 5 samples at 256², model loaded (issue 13).
timeout 150 python benchmarks/infer.py --device cuda --repeats 10 --checkpoint "$ck" --json 2>&1 | quiet > "$OUT/infer.log"
echo "infer rc ${PIPESTATUS[0]}" >> "$OUT/infer.log"; tail -30 "$OUT/infer.log"
# 3. The reward path end to end (issue 12 §1): eager rows, then the compiled row at 4,096.
timeout 240 python benchmarks/reward_gpu.py --device cuda --batch 256,1024,4096 --compile both \
  --compile-batches 4096 --json 2>&1 | quiet > "$OUT/reward_gpu.log"
echo "reward_gpu rc ${PIPESTATUS[0]}" >> "$OUT/reward_gpu.log"; tail -30 "$OUT/reward_gpu.log"
