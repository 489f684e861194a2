"""`matrl demo`: run the whole pipeline small on an in-process Ray and write a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from matrl.cli_args import check_output_dir


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the whole pipeline, small, on an in-process Ray (the embedded default)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (data, checkpoints, report)")
    parser.add_argument("--per-graph", type=int, default=32, help="synthetic samples per graph structure")
    parser.add_argument("--res", type=int, default=64, help="render resolution")
    parser.add_argument("--epochs", type=int, default=4, help="pre-training epochs")
    parser.add_argument("--reward-workers", type=int, default=2, help="reward worker actors behind the service")
    parser.add_argument("--generated", type=int, default=2, help="random structures added to the library graphs")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the in-process Ray (bound to 127.0.0.1)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from matrl.config import build
    from matrl.jobs.demo import DemoConfig, run_demo

    config = build(DemoConfig, {"out": args.out, "per_graph": args.per_graph, "res": args.res, "epochs": args.epochs,
                                "reward_workers": args.reward_workers, "generated": args.generated,
                                "num_cpus": args.num_cpus})
    check_output_dir(config.out, "--out")
    run_demo(config)
    return 0
