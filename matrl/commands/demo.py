"""`matrl demo`: run the whole pipeline small on an in-process Ray and write a report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the whole pipeline, small, on an in-process Ray (the embedded default)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--per-graph", type=int, default=32)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--reward-workers", type=int, default=2)
    parser.add_argument("--generated", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from matrl.jobs.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, per_graph=args.per_graph, res=args.res, epochs=args.epochs,
                        reward_workers=args.reward_workers, generated=args.generated, num_cpus=args.num_cpus))
    return 0
