"""`matrl gen-data --graphs LIB --per-graph N --res 256 --out DIR`: render the synthetic dataset (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from matrl.cli_args import SEED_MAX, check_output_dir, seed_arg
from matrl.config import build


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gen-data", help="render (image, parameter tokens) pairs of every graph into Parquet shards",
        description="Sample parameters of every graph, render them as Ray tasks, reject degenerate images "
                    "and write Parquet shards split 90/5/5 by graph structure. Re-running the same command "
                    "resumes: finished shards are skipped.")
    parser.add_argument("--graphs", default="library",
                        help="'library' (bundled graphs), a directory of graph JSON files, or a comma list "
                             "of library names / JSON paths (default: library)")
    parser.add_argument("--generated", type=int, default=0,
                        help="also sample this many random structures from the structure generator")
    parser.add_argument("--per-graph", type=int, required=True, help="samples kept per graph")
    parser.add_argument("--res", type=int, default=256, help="image resolution (power of two, 64..2048)")
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (created or resumed)")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per Parquet shard")
    parser.add_argument("--seed", type=seed_arg, default=0, help=f"seed of the parameter draws, 0..{SEED_MAX}")
    parser.add_argument("--split", type=float, nargs=3, default=(0.9, 0.05, 0.05),
                        metavar=("TRAIN", "VAL", "TEST"), help="fractions of structures per split")
    parser.add_argument("--batch-size", type=int, default=16, help="parameter sets rendered together")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray started when none is running (default: all)")
    parser.add_argument("--no-ray", action="store_true", help="render in this process, one unit at a time")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from learner.datagen import GenDataConfig, collect_graphs, generate, with_generated_graphs

    config = build(GenDataConfig, {
        "out": args.out, "per_graph": args.per_graph, "res": args.res, "shard_size": args.shard_size,
        "seed": args.seed, "batch_size": args.batch_size,
        "fractions": {"train": args.split[0], "val": args.split[1], "test": args.split[2]}})
    check_output_dir(config.out, "--out")
    graphs = with_generated_graphs(collect_graphs(args.graphs), args.generated, args.seed)
    if args.no_ray:
        summary = generate(config, graphs, use_ray=False)
    else:
        import ray

        from matrl.jobs.ray_runtime import init_ray

        started = init_ray(num_cpus=args.num_cpus, log_to_driver=False)["started"]
        try:
            summary = generate(config, graphs, use_ray=True)
        finally:
            if started:
                ray.shutdown()
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(summary.rejected.items())) or "none"
    print(f"{summary.units_total} shards ({summary.units_skipped} already done); this run kept "
          f"{summary.kept} samples, rejected: {rejected}; dataset in {args.out}")
    return 0
