"""Shared pieces of the benchmarks that run `matrl train` in-process (rllib_baseline.py, scaling.py).

  * `policy_checkpoint`: a freshly initialised policy saved as a checkpoint (seeded), the start of
    throughput runs that need no pre-training (`TINY_POLICY` sizes it for CPU tests);
  * `bootstrap_init`: a preset's `pretrain:<preset>` bootstrap, made once under a work directory;
  * `run_train_job`: one `TrainJob` run on the current Ray, returning its summary and the per-iteration
    rows of `metrics.jsonl`;
  * `median`: the median of the finite values (NaN when none).

Benchmark scripts put this directory on `sys.path` and import the module by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# the tiny policy of the CPU tests (tests/rl_helpers.py): seconds per PPO update on one core
TINY_POLICY = dict(node_dim=16, node_layers=1, node_heads=2, dim=32, layers=1, heads=2, mlp_ratio=2, max_slots=256)


def median(values) -> float:
    finite = sorted(float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    if not finite:
        return math.nan
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2


def policy_checkpoint(path: Path, size: dict | None = None, seed: int = 0) -> Path:
    """A randomly initialised `MaterialPolicy` (PolicyConfig defaults, or `size`'s overrides) with the
    default encoder, saved at `path`."""
    import torch

    from policy.checkpoint import save_checkpoint
    from policy.encoders import EncoderConfig
    from policy.model import MaterialPolicy, PolicyConfig
    from policy.tokenizer import Vocabulary

    torch.manual_seed(seed)
    encoder = EncoderConfig()
    policy = MaterialPolicy(PolicyConfig.for_encoder(encoder.build(), Vocabulary.from_registry(), **(size or {})))
    return save_checkpoint(path, policy, encoder=encoder.model_dump())


def bootstrap_init(job, work: Path) -> Path:
    """The job's `init`: a checkpoint directory as is, or its `pretrain:<preset>` bootstrap under `work`
    (made on the first call, then reused)."""
    if not job.init.startswith("pretrain:"):
        return Path(job.init)
    from matrl.jobs.pretrain import bootstrap_policy

    boot = job.bootstrap
    if boot.graphs is None and job.targets.synthetic.graphs:
        boot = boot.model_copy(update={"graphs": job.targets.synthetic.graphs})
    return bootstrap_policy(job.init.split(":", 1)[1], work, boot, job.seed)


def read_metrics(out: Path) -> list[dict]:
    """The per-iteration rows a run wrote to OUT/metrics.jsonl."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_train_job(config, out: Path, fixed_cluster: bool) -> tuple[dict, list[dict]]:
    """Run `matrl train` (the real TrainJob: actors on the current Ray, its own or a given reward
    service) to its end; returns (summary.json, metrics.jsonl rows). The actors are always stopped."""
    from matrl.jobs.train import TrainJob

    job = TrainJob(config, out, progress=False, fixed_cluster=fixed_cluster)
    try:
        summary = job.run()
    finally:
        job.close()
    return summary, read_metrics(out)
