"""`matrl train --config tiny|paper|PATH --out DIR [--resume] [--set key=value ...]`: PPO fine-tuning
on the actor-learner system (rollout workers, reward service, replay buffer, learner)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="PPO fine-tuning of the policy against the appearance reward (the actor-learner job)",
        description="Starts (or joins, with --address / RAY_ADDRESS) a Ray cluster, the reward service, "
                    "the replay buffer, the rollout workers and the learner, then runs PPO iterations. "
                    "Writes DIR/summary.json, checkpoints in DIR/checkpoints/{latest,best}, TensorBoard "
                    "logs in DIR/tensorboard and one line per iteration on the console.")
    parser.add_argument("--config", required=True, help="bundled preset (tiny, paper) or a YAML file")
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, logs, summary)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/latest")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set iterations=50 --set rollout.workers=4 (repeatable)")
    parser.add_argument("--reward-address", default=None,
                        help="use a running reward service at HOST:PORT instead of starting one (reward.address)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    parser.add_argument("--local", action="store_true",
                        help="run rollout worker, buffer and learner in this process (debugging); the reward "
                             "service still runs on Ray")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument("--job-name", default=None,
                        help="name of the job in metrics (tag 'job') and for `matrl scale` (default: the Ray job "
                             "submission id when submitted with `ray job submit`, else matrl-train)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from matrl.config import ConfigError, load_config, parse_overrides
    from matrl.jobs.train import TrainError, TrainJob, TrainJobConfig

    try:
        overrides = parse_overrides(args.set)
        if args.reward_address:
            overrides["reward.address"] = args.reward_address
        config = load_config(TrainJobConfig, "train", args.config, overrides)
    except ConfigError as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    import ray

    from matrl.jobs.ray_runtime import init_ray

    info = init_ray(args.address, num_cpus=config.num_cpus)
    import os

    name = args.job_name or os.environ.get("RAY_JOB_SUBMISSION_ID") or "matrl-train"
    job = TrainJob(config, args.out, resume=args.resume, local=args.local, progress=not args.no_progress,
                   fixed_cluster=info["started"], job_name=name)
    try:
        summary = job.run()
    except TrainError as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    finally:
        job.close()
        if info["started"]:
            ray.shutdown()
    print(json.dumps({k: v for k, v in summary.items() if k != "val_history"}))
    print(f"summary: {args.out / 'summary.json'}")
    return 0
