"""Where a training job's numbers go: the Ray dashboard (`ray.util.metrics`, scraped by Prometheus
from each node's metrics endpoint), TensorBoard event files, `metrics.jsonl`, and one console
line per iteration under a progress bar.

Every gauge is named `matrl_<name>` and tagged with the job name, so several jobs on one cluster
stay apart in Grafana. Counters (`matrl_reward_failures`, `matrl_rollout_restarts`, ...) only grow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

GAUGES = {
    "trajectories_per_s": "trajectories sampled, scored and stored per second (last iteration)",
    "reward_samples_per_s": "reward samples scored per second of reward phase",
    "reward_mean": "mean appearance reward of the iteration's trajectories",
    "reward_max": "best appearance reward of the iteration's trajectories",
    "val_reward": "mean greedy reward on the validation targets",
    "val_sample_reward": "mean reward of top-p samples on the validation targets (validation.samples)",
    "val_best_of_n": "mean top-1 of validation.samples samples on the validation targets",
    "approx_kl": "approximate KL between the policy before and after the update",
    "kl_ref": "mean log-ratio to the frozen pre-trained reference",
    "entropy": "mean token entropy of the policy",
    "policy_loss": "PPO clipped surrogate loss",
    "value_loss": "value-network loss",
    "clipfrac": "fraction of ratios clipped",
    "explained_variance": "value network's explained variance of the returns",
    "policy_lag": "mean policy-version lag of the trained rows",
    "buffer_rows": "rows held by the replay buffer",
    "buffer_bytes": "bytes held by the replay buffer",
    "rollout_workers": "live rollout workers",
    "reward_workers": "ready reward workers",
    "learner_idle_fraction": "share of the iteration the learner waited for data",
    "rollout_idle_fraction": "share of the iteration rollout workers waited (for weights or the learner)",
    "weight_sync_s": "seconds to publish and load new weights",
    "iteration_s": "wall seconds of the iteration",
    "phase_s": "seconds per phase of the iteration (tag phase)",
}
COUNTERS = {
    "trajectories": "trajectories trained on",
    "reward_failures": "samples the reward service failed",
    "rollout_restarts": "rollout workers restarted after dying",
    "reward_retries": "reward tasks re-dispatched after a reward worker died",
    "reward_restarts": "reward workers restarted or replaced",
    "stale_dropped": "rows dropped for exceeding the policy-lag bound",
}


class RayMetrics:
    def __init__(self, job: str):
        from ray.util.metrics import Counter, Gauge

        self.gauges = {name: Gauge(f"matrl_{name}", description=desc, tag_keys=("job", "phase"))
                       for name, desc in GAUGES.items()}
        self.counters = {name: Counter(f"matrl_{name}", description=desc, tag_keys=("job",))
                         for name, desc in COUNTERS.items()}
        self.job = job

    def set(self, name: str, value: float, phase: str = "") -> None:
        if name in self.gauges and value is not None and math.isfinite(value):
            self.gauges[name].set(float(value), tags={"job": self.job, "phase": phase})

    def inc(self, name: str, value: float) -> None:
        if name in self.counters and value and value > 0:
            self.counters[name].inc(float(value), tags={"job": self.job})


class JobMetrics:
    """All sinks of one job. `ray_metrics=False` where no Ray runs (unit tests)."""

    def __init__(self, out_dir: str | Path, job: str = "matrl-train", ray_metrics: bool = True,
                 total_iterations: int | None = None, start_iteration: int = 0, progress: bool = True):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start_iteration + 1)
        self.ray = RayMetrics(job) if ray_metrics else None
        self.bar = tqdm(total=total_iterations, initial=start_iteration, unit="it", desc="rl",
                        disable=not progress, dynamic_ncols=True)
        self._jsonl = open(self.out_dir / "metrics.jsonl", "a")

    def iteration(self, iteration: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                self.writer.add_scalar(key, float(value), iteration)
        self.writer.flush()
        self._jsonl.write(json.dumps({"iteration": iteration, **metrics}, default=float) + "\n")
        self._jsonl.flush()
        if self.ray is not None:
            for name in GAUGES:
                if name in metrics:
                    self.ray.set(name, metrics[name])
            for phase in ("sample", "reward", "learn", "weight_sync", "validate", "checkpoint"):
                if f"phase/{phase}_s" in metrics:
                    self.ray.set("phase_s", metrics[f"phase/{phase}_s"], phase)
            for name in COUNTERS:
                self.ray.inc(name, metrics.get(f"count/{name}", 0))
        line = (f"it {iteration:4d}  reward {metrics.get('reward_mean', float('nan')):+.3f} "
                f"(max {metrics.get('reward_max', float('nan')):+.3f})  "
                f"val {metrics.get('val_reward', float('nan')):+.3f}  "
                + (f"val~ {metrics['val_sample_reward']:+.3f}  " if "val_sample_reward" in metrics else "") +
                f"kl {metrics.get('approx_kl', float('nan')):.4f}  ent {metrics.get('entropy', float('nan')):.3f}  "
                f"traj/s {metrics.get('trajectories_per_s', float('nan')):.1f}  "
                f"{metrics.get('iteration_s', float('nan')):.1f}s")
        self.bar.write(line)
        self.bar.update(1)

    def scalar(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(key, value, step)
        self.writer.flush()
        if self.ray is not None and key in ("val_reward", "val_sample_reward", "val_best_of_n"):
            self.ray.set(key, value)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self._jsonl.close()
