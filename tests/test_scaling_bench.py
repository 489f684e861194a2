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


def check_point(p: dict) -> None:
    assert "error" not in p, p
    assert p["gpu_reward"] == 0 and p["rollout"] == 1
    for key in ("trajectories_per_s", "reward_samples_per_s", "iteration_s", "sample_s", "reward_s", "learn_s",
                "weight_sync_s"):
        assert positive(p[key]), (key, p)
    assert 0 <= p["learner_idle"] <= 1 and 0 <= p["rollout_idle"] <= 1, p
    assert p["minibatch"] == p["buffer"] // 2 and p["iterations"] >= 1


def test_scaling_one_point_writes_the_scaling_json_keys(tmp_path):
    """The default-suite size (~1 min): one real asynchronous point (1 CPU reward worker, one measured
    iteration), the control at K = 1, and the rllib_* / matrl_* keys from a rllib_baseline.py result file.
    With one reward count there is no scaling ratio: reward_scaling_vs_control_min stays null."""
    rllib = tmp_path / "rllib_baseline.json"  # the shape benchmarks/rllib_baseline.py writes
    rllib.write_text(json.dumps({"meta": {}, "rows": [
        {"system": "matrl", "trajectories_per_s": 12.0, "val_reward": 0.29},
        {"system": "rllib", "trajectories_per_s": 6.0, "val_reward": 0.24},
        {"system": "matrl", "trajectories_per_s": 10.0, "val_reward": 0.27}]}))
    result, stdout = run_scaling(tmp_path, "--reward-workers", "1", "--modes", "async", "--warmup", "0",
                                 "--iterations", "1", "--control-s", "1", "--rllib-json", str(rllib))
    assert tuple(result)[:len(KEYS)] == KEYS and result["partial"] is False
    assert result["date"] and "CPUs" in result["host"]
    for key in ("trajectories_per_s_max", "rllib_trajectories_per_s", "matrl_trajectories_per_s", "rllib_val_reward",
                "matrl_val_reward"):
        assert positive(result[key]), key
    assert result["matrl_trajectories_per_s"] == 11.0 and result["rllib_val_reward"] == 0.24  # means over rows
    assert 0 <= result["learner_idle_async"] <= 1
    assert result["gpu_reward_samples_per_s"] is None and result["reward_scaling_vs_control_min"] is None
    [point] = result["points"]
    check_point(point)
    assert point["mode"] == "async" and result["trajectories_per_s_max"] == point["trajectories_per_s"]
    [k1] = result["reward_scaling"]
    assert k1["workers"] == 1 and positive(k1["control_calls_per_s"]) and k1["efficiency_vs_control"] == 1.0
    assert k1["reward_samples_per_s"] == point["reward_samples_per_s"]
    assert "efficiency vs control" in stdout and "| async | 1 | 1 | 0 |" in stdout


@pytest.mark.slow
def test_scaling_quick_measures_reward_scaling_against_the_control(tmp_path):
    """`--quick` as documented (2-3.5 min here): sync at 1 and 2 CPU reward workers with the control at
    K = 1, 2, async at 2; the efficiency is the reward ratio over the control's."""
    result, stdout = run_scaling(tmp_path)
    assert tuple(result)[:len(KEYS)] == KEYS
    assert [(p["cpu_reward"], p["mode"]) for p in result["points"]] == [(1, "sync"), (2, "sync"), (2, "async")]
    for p in result["points"]:
        check_point(p)
    by_k = {p["cpu_reward"]: p for p in result["points"] if p["mode"] == "sync"}
    assert by_k[2]["buffer"] > by_k[1]["buffer"]  # the buffer grows with the reward workers
    scaling = {s["workers"]: s for s in result["reward_scaling"]}
    assert set(scaling) == {1, 2} and scaling[1]["efficiency_vs_control"] == 1.0
    s = scaling[2]
    assert positive(s["control_calls_per_s"]) and positive(s["control_per_process"])
    assert s["reward_samples_per_s"] == by_k[2]["reward_samples_per_s"]
    assert math.isclose(s["efficiency_vs_control"], (s["reward_samples_per_s"] / scaling[1]["reward_samples_per_s"])
                        / (s["control_calls_per_s"] / scaling[1]["control_calls_per_s"]))
    assert positive(result["reward_scaling_vs_control_min"])
    assert result["reward_scaling_vs_control_min"] == s["efficiency_vs_control"]
    assert result["trajectories_per_s_max"] == max(p["trajectories_per_s"] for p in result["points"])
    assert 0 <= result["learner_idle_async"] <= 1 and result["rllib_trajectories_per_s"] is None
    assert "| sync | 1 | 2 | 0 |" in stdout


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
