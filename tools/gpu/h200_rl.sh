#!/usr/bin/env bash
# On an H200 host (device tool): `matrl train --config h200` from the online pre-trained checkpoint
# for at most SECONDS (the run stops at iterations or at the time limit of the call), results to $OUT.
#   bash tools/gpu/h200_rl.sh ITERATIONS [extra --set ...]
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
iterations=$1; shift
ck=$(python -c "from policy.checkpoint import latest_checkpoint; print(latest_checkpoint('runs/online/checkpoints'))")
python -m matrl.cli train --config h200 --out runs/rl_h200 --no-progress --set init="$ck" \
  --set iterations="$iterations" "$@" 2>&1 | grep -v "Warning\|warn(" | tee "$OUT/rl.log"
cp runs/rl_h200/metrics.jsonl runs/rl_h200/summary.json runs/rl_h200/validation_pretrained.json "$OUT/" 2>/dev/null
python -c "from matrl.reports.curves import plot_run; plot_run('runs/rl_h200', '$OUT/rl_h200_curves.png', title='matrl train --config h200 (one H200)')"
tar czf "$OUT/rl_best.tgz" -C runs/rl_h200/checkpoints best
