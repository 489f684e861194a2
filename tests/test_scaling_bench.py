"""benchmarks/scaling.py: real `matrl train` runs (local Ray, reward pool behind gRPC, buffer, rollout
worker, learner) at the smallest sizes, the compute-bound control at the same K, and the
docs/scaling.json keys. No timing asserts: the numbers only have to exist, be finite and positive."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = ("host", "date", "trajectories_per_s_max", "gpu_reward_samples_per_s", "reward_scaling_vs_control_min",
        "learner_idle_async", "rllib_trajectories_per_s", "matrl_trajectories_per_s", "rllib_val_reward",
        "matrl_val_reward")


def run_scaling(tmp_path: Path, *flags: str) -> tuple[dict, str]:
    out = tmp_path / "scaling.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--quick", "--work",
                          str(tmp_path / "work"), "--json", str(out), *flags], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text()), run.stdout


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_points(result: dict, modes: set[str]) -> None:
    assert {(p["cpu_reward"], p["mode"]) for p in result["points"]} >= {(1, "sync"), (2, "sync")}
    assert {p["mode"] for p in result["points"]} == modes
    for p in result["points"]:
        assert "error" not in p, p
        assert p["gpu_reward"] == 0 and p["rollout"] == 1
        for key in ("trajectories_per_s", "reward_samples_per_s", "iteration_s", "sample_s", "reward_s", "learn_s",
                    "weight_sync_s"):
            assert positive(p[key]), (key, p)
        assert 0 <= p["learner_idle"] <= 1 and 0 <= p["rollout_idle"] <= 1, p
    by_k = {p["cpu_reward"]: p for p in result["points"] if p["mode"] == "sync"}
    assert by_k[2]["buffer"] > by_k[1]["buffer"]  # the buffer grows with the reward workers
    assert by_k[2]["minibatch"] == by_k[2]["buffer"] // 2
    scaling = {s["workers"]: s for s in result["reward_scaling"]}
    assert set(scaling) == {1, 2} and scaling[1]["efficiency_vs_control"] == 1.0
    s = scaling[2]
    assert positive(s["control_calls_per_s"]) and positive(s["control_per_process"])
    assert s["reward_samples_per_s"] == by_k[2]["reward_samples_per_s"]
    assert math.isclose(s["efficiency_vs_control"], (s["reward_samples_per_s"] / scaling[1]["reward_samples_per_s"])
                        / (s["control_calls_per_s"] / scaling[1]["control_calls_per_s"]))
    assert result["reward_scaling_vs_control_min"] == s["efficiency_vs_control"]
    assert result["trajectories_per_s_max"] == max(p["trajectories_per_s"] for p in result["points"])


def test_scaling_quick_core_writes_the_scaling_json_keys(tmp_path):
    """Two real points (1 and 2 CPU reward workers, sync, one measured iteration each) and the control
    at K = 1, 2; the rllib_* / matrl_* keys come from a rllib_baseline.py result file (~1.5 min)."""
    rllib = tmp_path / "rllib_baseline.json"  # the shape benchmarks/rllib_baseline.py writes
    rllib.write_text(json.dumps({"meta": {}, "rows": [
        {"system": "matrl", "trajectories_per_s": 12.0, "val_reward": 0.29},
        {"system": "rllib", "trajectories_per_s": 6.0, "val_reward": 0.24},
        {"system": "matrl", "trajectories_per_s": 10.0, "val_reward": 0.27}]}))
    result, stdout = run_scaling(tmp_path, "--modes", "sync", "--warmup", "0", "--iterations", "1",
                                 "--control-s", "1", "--rllib-json", str(rllib))
    assert tuple(result)[:len(KEYS)] == KEYS
    assert result["date"] and "CPUs" in result["host"]
    for key in ("trajectories_per_s_max", "reward_scaling_vs_control_min", "rllib_trajectories_per_s",
                "matrl_trajectories_per_s", "rllib_val_reward", "matrl_val_reward"):
        assert positive(result[key]), key
    assert result["matrl_trajectories_per_s"] == 11.0 and result["rllib_val_reward"] == 0.24
    assert result["gpu_reward_samples_per_s"] is None and result["learner_idle_async"] is None  # CPU, sync only
    check_points(result, {"sync"})
    assert "efficiency vs control" in stdout and "| sync | 1 | 2 | 0 |" in stdout


@pytest.mark.slow
def test_scaling_quick_runs_both_modes(tmp_path):
    """`--quick` as documented: sync at 1 and 2 CPU reward workers, async at 2 (~2.5 min)."""
    result, _ = run_scaling(tmp_path)
    check_points(result, {"sync", "async"})
    assert 0 <= result["learner_idle_async"] <= 1
    assert result["rllib_trajectories_per_s"] is None  # no --rllib-json


def test_scaling_points_and_sizes_follow_the_grid():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import scaling

    args = scaling.parse_args(["--reward-workers", "4,8", "--rollout-workers", "1,2", "--modes", "sync,async",
                               "--device", "cpu"])
    args.gpu_reward_workers = [0, 1]  # (a CPU run refuses GPU reward actors; the grid itself needs no GPU)
    chosen = scaling.points(args)
    P = scaling.Point
    assert chosen == [P(4, 0, 2, "sync"), P(8, 0, 2, "sync"), P(8, 1, 2, "sync"), P(8, 1, 1, "sync"),
                      P(8, 1, 2, "async")]
    args.grid = "full"
    assert len(scaling.points(args)) == 2 * 2 * 2 * 2
    size = scaling.sizes(args, P(28, 2, 2, "sync"))  # 4 x 28 + 256 x 2 = 624 targets over 2 rollout workers
    assert size == {"targets": 624, "targets_per_worker": 312, "buffer": 4992, "minibatch": 2496}
    assert scaling.sizes(args, P(1, 0, 3, "sync"))["targets"] == 33  # at least 32, a multiple of 3
    with pytest.raises(SystemExit):
        scaling.parse_args(["--gpu-reward-workers", "1", "--device", "cpu"])
