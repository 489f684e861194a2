"""`matrl train` submitted as a Ray job to a real local head (`ray start --head`, token auth), the way
README's "Run on a cluster" does it: the job succeeds, writes its checkpoint, the reward moves, and the
job's custom metrics appear on the node's Prometheus endpoint while it runs."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

from policy.checkpoint import save_checkpoint
from policy.encoders import EncoderConfig
from tests.rl_helpers import GRAPHS, tiny_policy
from tests.ray_head import ray_executable

RAY_HEAD_OPTIONS = {"num_cpus": 2}


def test_matrl_train_as_a_ray_job_checkpoints_and_exports_metrics(ray_head, tmp_path):
    init = save_checkpoint(tmp_path / "init", tiny_policy(), encoder=EncoderConfig().model_dump())
    out = tmp_path / "run"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    name = f"matrl-job-{uuid.uuid4().hex[:8]}"
    sets = {"init": str(init), "iterations": 30, "targets.synthetic.graphs": f"[{','.join(GRAPHS)}]",
            "rollout.targets_per_worker": 2, "rollout.sampling.samples_per_target": 4, "rollout.num_cpus": 0.25,
            "learner.num_cpus": 0.25, "reward.workers": 1, "reward.num_cpus": 1, "validation.targets": 4,
            "validation.every": 10, "ppo.minibatch": 8, "ppo.epochs": 2}
    command = ["matrl", "train", "--config", "tiny", "--out", str(out), "--no-progress", "--job-name", name]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    submitted = subprocess.run(
        [ray_executable(), "job", "submit", "--no-wait", "--address", ray_head.dashboard_url,
         "--submission-id", name, "--working-dir", str(job_dir), "--", *command],
        env=ray_head.env, capture_output=True, text=True, timeout=180)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]

    client = ray_head.job_client()
    seen: dict[str, float] = {}
    wanted = ("ray_matrl_trajectories_per_s", "ray_matrl_reward_mean", "ray_matrl_buffer_bytes",
              "ray_matrl_rollout_workers")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        for metric in wanted:
            for labels, value in ray_head.metric_samples(metric):
                if labels.get("job") == name:
                    seen[metric] = value
        status = client.get_job_status(name).value
        if status not in ("PENDING", "RUNNING"):
            break
        time.sleep(1.0)
    logs = client.get_job_logs(name)
    assert ray_head.wait_for_job(name) == "SUCCEEDED", logs[-4000:]
    assert set(seen) == set(wanted), f"metrics seen on {ray_head.metrics_url}: {seen}"
    assert seen["ray_matrl_rollout_workers"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 30
    assert summary["reward_first"] != summary["reward_last"]
    assert (out / "checkpoints" / "latest" / "model.safetensors").is_file()
    assert "it   30" in logs
