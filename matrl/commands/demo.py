"""`matrl demo`: the whole system, small, on a local Ray, ending in DIR/report.html (the embedded default)."""

from __future__ import annotations

import argparse
from pathlib import Path

from matrl.cli_args import check_output_dir


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole system, small, on a local Ray: pre-training, PPO through the actor-learner, "
                     "evaluation, an HTML report (the embedded default)",
        description="Runs `matrl train --config tiny` (data generation, pre-training, reward service, rollout "
                    "worker, replay buffer, learner), then compares the pre-trained and fine-tuned policies on "
                    "held-out targets (and one real photo from ../shared/real_photos when present). Writes "
                    "DIR/report.html and DIR/summary.json. About 6-10 minutes on two CPU cores, no network.")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (report, summary, run)")
    parser.add_argument("--preset", default="tiny", help="train preset to run (default: tiny)")
    parser.add_argument("--iterations", type=int, default=8,
                        help="PPO iterations (default 8; the tiny preset's own run is 20)")
    parser.add_argument("--examples", type=int, default=8, help="held-out targets shown before/after in the report")
    parser.add_argument("--photos", type=Path, default=None,
                        help="directory of photos, one shown in the report (default: ../shared/real_photos)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (bound to 127.0.0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole run")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from matrl.config import build
    from matrl.jobs.demo import DemoConfig, run_demo

    config = build(DemoConfig, {"out": args.out, "preset": args.preset, "iterations": args.iterations,
                                "examples": args.examples, "photos": args.photos, "num_cpus": args.num_cpus,
                                "seed": args.seed})
    check_output_dir(config.out, "--out")
    run_demo(config)
    return 0
