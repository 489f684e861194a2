#!/usr/bin/env bash
# On an H200 host (device tool): `matrl train --config h200` from the online pre-trained checkpoint
# (runs/online, from tools/gpu/h200_pretrain.sh or unpacked from a carried .gpu_ck/online_ck.tgz),
# stopping after SECONDS of training (max_wall_s, counted over resumed calls too), results to $OUT.
# A call's 10 minutes hold ~8 minutes of training; a second call with --resume continues the run on
# the same (still warm) machine.
#   bash tools/gpu/h200_rl.sh SECONDS [--resume] [extra --set ...]
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
seconds=$1; shift
resume=(); if [[ ${1:-} == --resume ]]; then resume=(--resume); shift; fi
if [[ ! -d runs/online/checkpoints && -f .gpu_ck/online_ck.tgz ]]; then
  mkdir -p runs/online/checkpoints && tar xzf .gpu_ck/online_ck.tgz -C runs/online/checkpoints
fi
ck=$(python -c "from policy.checkpoint import latest_checkpoint; print(latest_checkpoint('runs/online/checkpoints'))")
python -m matrl.cli train --config h200 --out runs/rl_h200 --no-progress ${resume[@]+"${resume[@]}"} \
  --set init="$ck" --set iterations=2000 --set max_wall_s="$seconds" "$@" 2>&1 \
  | grep -v "Warning\|warn(" | tee "$OUT/rl.log" | tail -40
cp runs/rl_h200/metrics.jsonl runs/rl_h200/summary.json runs/rl_h200/validation_pretrained.json "$OUT/" 2>/dev/null
python -c "from matrl.reports.curves import plot_run; plot_run('runs/rl_h200', '$OUT/rl_h200_curves.png', title='matrl train --config h200 (one H200)')"
tar czf "$OUT/rl_best.tgz" -C runs/rl_h200/checkpoints --exclude=trainer_state.pt best
