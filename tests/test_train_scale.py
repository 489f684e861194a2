"""`matrl scale` changes the worker counts of a running `matrl train` job at its next iteration,
without losing trajectories, and refuses counts outside the job's bounds."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from policy.checkpoint import save_checkpoint
from policy.encoders import EncoderConfig
from tests.rl_helpers import GRAPHS, tiny_policy

RAY_HEAD_OPTIONS = {"num_cpus": 4}


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_scale_changes_live_counts_of_a_running_job(ray_head, tmp_path):
    init = save_checkpoint(tmp_path / "init", tiny_policy(), encoder=EncoderConfig().model_dump())
    out = tmp_path / "run"
    sets = {"init": str(init), "iterations": 40, "targets.synthetic.graphs": f"[{','.join(GRAPHS)}]",
            "rollout.targets_per_worker": 2, "rollout.sampling.samples_per_target": 4, "rollout.num_cpus": 0.25,
            "rollout.max_workers": 3, "learner.num_cpus": 0.25, "reward.workers": 1, "reward.num_cpus": 1,
            "reward.max_workers": 2, "validation.targets": 4, "validation.every": 0, "ppo.minibatch": 8,
            "ppo.epochs": 1}
    command = [sys.executable, "-m", "matrl.cli", "train", "--config", "tiny", "--out", str(out), "--no-progress",
               "--address", ray_head.gcs_address, "--job-name", "scaled"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    job = subprocess.Popen(command, env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while len(_lines(out / "metrics.jsonl")) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert job.poll() is None, job.stdout.read()[-3000:]
        scale = [sys.executable, "-m", "matrl.cli", "scale", "--address", ray_head.gcs_address]
        refused = subprocess.run(scale + ["--rollout-workers", "9"], env=ray_head.env, capture_output=True,
                                 text=True, timeout=180)
        assert refused.returncode == 2 and "outside this job's bounds [1, 3]" in refused.stderr, refused.stderr
        done = subprocess.run(scale + ["--job", "scaled", "--rollout-workers", "2", "--reward-workers", "2",
                                       "--wait", "300"], env=ray_head.env, capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads(done.stdout.strip().splitlines()[0])
        assert status["live"] == {"rollout": 2, "reward": 2} == status["desired"]
        log, _ = job.communicate(timeout=900)
        assert job.returncode == 0, log[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    lines = _lines(out / "metrics.jsonl")
    assert [m["iteration"] for m in lines] == list(range(1, 41))
    before = [m for m in lines if m["rollout_workers"] == 1]
    after = [m for m in lines if m["rollout_workers"] == 2]
    assert before and after and lines[-1]["rollout_workers"] == 2
    assert all(m["trajectories"] == 8 for m in before) and all(m["trajectories"] == 16 for m in after)
    assert lines[-1]["reward_workers"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trajectories"] == sum(m["trajectories"] for m in lines)


def test_gpu_reward_actors_are_not_counted_as_the_reward_workers_to_scale():
    """`reward.workers` counts CPU reward workers; GPU reward actors are a fixed number beside them.
    Comparing the pool's total with the asked-for count re-asked for the same size every iteration
    (the H200 smoke run printed 'scaling reward workers 13 -> 12' each time)."""
    import asyncio
    from types import SimpleNamespace

    from matrl.jobs.control import JobControl
    from matrl.jobs.runtime import LocalRuntime
    from matrl.jobs.train import TrainJob

    resized = []

    class Pool:  # three CPU workers and one GPU reward actor
        size = 3

        def status(self):
            return {"workers": 4, "ready": 4}

        async def resize(self, workers):
            resized.append(workers)
            self.size = workers

    rt = LocalRuntime()
    job = object.__new__(TrainJob)
    job.runtime, job.rollouts = rt, [object()]
    job.server = SimpleNamespace(pool=Pool(), run=lambda coro, timeout_s=None: asyncio.run(coro))
    job.config = SimpleNamespace(rollout=SimpleNamespace(timeout_s=5.0))
    job.control = rt.actor(JobControl, "j", {"rollout": (1, 2), "reward": (1, 8)}, {"rollout": 1, "reward": 3}, True)
    assert job._apply_scaling() == {"rollout": 1, "reward": 3} and resized == []
    rt.get(rt.call(job.control, "request", None, 5))
    assert job._apply_scaling() == {"rollout": 1, "reward": 5} and resized == [5]
    assert rt.get(rt.call(job.control, "status"))["live"]["reward"] == 5
