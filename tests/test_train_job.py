"""`matrl train` end to end on a local Ray: the real roles (reward service behind gRPC, replay buffer,
rollout worker and learner actors), checkpoints, exact resume, a rollout worker killed mid-run."""

import json
import os
import signal
import threading
import time

import pytest
import ray
import torch
from safetensors.torch import load_file

from matrl.cli import main
from policy.checkpoint import save_checkpoint
from policy.encoders import EncoderConfig
from tests.rl_helpers import GRAPHS, tiny_policy


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "policy"
    return save_checkpoint(path, tiny_policy(), encoder=EncoderConfig().model_dump())


def job_args(init, out, iterations=2, *extra):
    sets = {"init": str(init), "iterations": iterations, "targets.synthetic.graphs": f"[{','.join(GRAPHS)}]",
            "rollout.targets_per_worker": 2, "rollout.sampling.samples_per_target": 4, "rollout.num_cpus": 0.25,
            "rollout.timeout_s": 300, "learner.num_cpus": 0.25, "reward.workers": 1, "validation.targets": 4,
            "validation.every": 1, "validation.samples": 2, "ppo.minibatch": 8, "ppo.epochs": 2}
    args = ["train", "--config", "tiny", "--out", str(out), "--no-progress"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args + list(extra)


def weights(run):
    return load_file(run / "checkpoints" / "latest" / "model.safetensors")


def test_train_runs_checkpoints_and_resumes_exactly(cluster, init_checkpoint, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(job_args(init_checkpoint, straight, 2)) == 0
    summary = json.loads((straight / "summary.json").read_text())
    for key in ("iterations", "trajectories_per_s", "reward_first", "reward_last", "val_reward_pretrained",
                "val_reward_best", "wall_s"):
        assert key in summary, key
    assert summary["iterations"] == 2 and summary["trajectories"] == 16
    assert (straight / "checkpoints" / "best" / "model.safetensors").is_file()
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2]
    # sampled validation: [iteration, expected top-p reward, top-1 of 2] before RL and after each iteration
    history = summary["val_sample_history"]
    assert [row[0] for row in history] == [0, 1, 2] and all(row[2] >= row[1] for row in history)
    assert lines[-1]["val_sample_reward"] == history[-1][1]
    assert list((straight / "tensorboard").iterdir())
    # an interrupted run (1 iteration) resumed to 2 makes the same second iteration
    assert main(job_args(init_checkpoint, split, 1)) == 0
    assert main(job_args(init_checkpoint, split, 2, "--resume")) == 0
    a, b = weights(straight), weights(split)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    again = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert again[-1]["reward_mean"] == lines[-1]["reward_mean"]
    assert again[-1]["loss"] == pytest.approx(lines[-1]["loss"], rel=1e-6)
    # a run directory is never overwritten silently
    assert main(job_args(init_checkpoint, straight, 2)) == 2


def test_bad_configs_fail_before_any_actor_starts(cluster, init_checkpoint, tmp_path, capsys):
    assert main(job_args(init_checkpoint, tmp_path / "a", 2, "--set", "ppo.minibatch_size=3")) == 2
    assert "ppo.minibatch_size: unknown key" in capsys.readouterr().err
    assert main(job_args(tmp_path / "missing", tmp_path / "b", 2)) == 2
    assert "neither a checkpoint directory" in capsys.readouterr().err
    assert main(job_args(init_checkpoint, tmp_path / "c", 2, "--set", "ppo.minibatch=1000")) == 2
    assert "exceeds the 8 trajectories" in capsys.readouterr().err
    started = time.monotonic()
    assert main(job_args(init_checkpoint, tmp_path / "d", 2, "--reward-address", "127.0.0.1:9",
                         "--set", "reward.connect_timeout_s=2")) == 2
    assert "not reachable" in capsys.readouterr().err
    assert time.monotonic() - started < 120


def role_pids(out, role: str) -> list[int]:
    """Process ids the job wrote for a role (OUT/roles.json): never another job's processes."""
    path = out / "roles.json"
    if not path.is_file():
        return []
    try:
        pids = json.loads(path.read_text())[role]
    except (ValueError, KeyError):
        return []
    return [p for p in (pids if isinstance(pids, list) else [pids]) if p]


def _kill_first(out, role: str, delay_s: float, killed: list, after_file=None) -> None:
    """SIGKILL the job's first process of `role`, `delay_s` after it appears (and, if given, after
    `after_file` exists)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if after_file is not None and not after_file.exists():
            time.sleep(0.2)
            continue
        pids = role_pids(out, role)
        if pids:
            time.sleep(delay_s)
            pid = role_pids(out, role)[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.2)


def test_a_rollout_worker_killed_mid_run_is_replaced_and_no_trajectory_is_lost(cluster, init_checkpoint, tmp_path):
    out = tmp_path / "killed"
    killed: list = []
    killer = threading.Thread(target=_kill_first, args=(out, "rollout", 0.0, killed), daemon=True)
    killer.start()
    assert main(job_args(init_checkpoint, out, 4, "--set", "validation.every=0")) == 0
    killer.join(5)
    assert killed, "the test never found a rollout worker to kill"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"]["rollout_restarts"] >= 1
    assert summary["iterations"] == 4 and summary["trajectories"] == 32


def test_async_mode_never_trains_on_rows_older_than_the_lag_bound(cluster, init_checkpoint, tmp_path):
    out = tmp_path / "async"
    assert main(job_args(init_checkpoint, out, 3, "--set", "mode=async", "--set", "max_policy_lag=1",
                         "--set", "rollout.workers=2", "--set", "validation.every=0")) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2, 3]
    assert all(m["policy_lag_max"] <= 1 for m in lines), [m["policy_lag_max"] for m in lines]
    assert all(m["trajectories"] == 16 for m in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "async" and summary["iterations"] == 3
    assert "learner_idle_fraction" in lines[-1]


def test_a_killed_learner_is_restarted_from_the_latest_checkpoint(cluster, init_checkpoint, tmp_path):
    """The learner dies after the first checkpoint: the job restores it from checkpoints/latest, redoes
    what was lost, and finishes every iteration."""
    out = tmp_path / "learner"
    killed: list = []
    marker = out / "checkpoints" / "latest" / "config.json"
    killer = threading.Thread(target=_kill_first, args=(out, "learner", 0.5, killed, marker), daemon=True)
    killer.start()
    assert main(job_args(init_checkpoint, out, 3, "--set", "validation.every=0")) == 0
    killer.join(5)
    assert killed, "the test never found the learner to kill"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"]["learner_restarts"] == 1
    assert summary["iterations"] == 3
    assert json.loads((out / "checkpoints" / "latest" / "config.json").read_text())["epoch"] == 3
