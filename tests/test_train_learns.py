"""RL learns on CPU (issue: "it learns"): the tiny preset raises the greedy validation reward above the
pre-trained policy's within its 20 iterations, for three seeds.

The margins, stated (measured on 2 cores, docs/rl.md, 2026-11-30, from the bootstrap's start of
greedy 0.663-0.666 on each seed's 32 validation targets):
- every seed's best greedy validation (of the 5 taken during RL) is at least 0.005 above its
  pre-trained value (measured +0.014 / +0.007 / +0.018 for seeds 0 / 1 / 2);
- averaged over the seeds, the last greedy validation and the last expected reward of 8 top-p
  samples per target are above their pre-trained values (measured +0.008 and +0.009; seed 1 alone
  ends slightly below on both, -0.007 and -0.001).
The gains are small: from this start the policy has little left to gain on four structures in 20
iterations of 256 trajectories. One bootstrap pre-training is shared by the three runs (RL seeds
0, 1, 2). Slow: about 8 minutes for seed 0 (bootstrap included) and 5 for the others on 2 cores.
"""

import json
import shutil

import pytest
import ray

from matrl.cli import main

MARGIN_BEST = 0.005


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_tiny_preset_raises_validation_reward_for_three_seeds(tmp_path):
    first = tmp_path / "seed0"
    results = {}
    for seed in (0, 1, 2):
        out = tmp_path / f"seed{seed}"
        if seed:
            shutil.copytree(first / "pretrain", out / "pretrain")  # the same starting policy
        try:
            assert main(["train", "--config", "tiny", "--out", str(out), "--no-progress", "--set", f"seed={seed}"]) == 0
        finally:
            ray.shutdown()
        summary = json.loads((out / "summary.json").read_text())
        history = [v for _, v in summary["val_history"]]
        sampled = [v for _, v, _ in summary["val_sample_history"]]
        results[seed] = (summary["val_reward_pretrained"], max(history[1:]), history[-1], sampled[0], sampled[-1])
        print(f"seed {seed}: greedy {[round(v, 4) for v in history]} sampled {[round(v, 4) for v in sampled]} "
              f"wall {summary['wall_s']:.0f} s", flush=True)
    for seed, (before, best, *_) in results.items():
        assert best >= before + MARGIN_BEST, (seed, results)
    assert sum(last - before for before, _, last, _, _ in results.values()) > 0, results
    assert sum(after - start for _, _, _, start, after in results.values()) > 0, results
