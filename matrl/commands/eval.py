"""`matrl eval --checkpoint A [--baseline B] --split test|real [--data DIR | --graphs NAMES | --photos DIR]
[--samples 5] [--budgets 5,25,50,150] [--refine SECONDS] --out DIR`: top-1 quality and time of policy
checkpoints (paper §6: Tables 1-2, Fig. 11) as a CSV, a Markdown table, a curve and an HTML report."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from matrl.cli_args import as_arg_type, check_device, check_output_dir, positive_int, seed_arg
from matrl.errors import UserError

device_or_auto = as_arg_type(functools.partial(check_device, allow_auto=True))


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 5,25,50,150") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: no budget given")
    return values


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="compare policy checkpoints: top-1 reward, LPIPS-style distance and time per sampling budget",
        description="For every target, model and budget N, run the inference pipeline with N candidates and keep "
                    "the top-1 by appearance reward: on the synthetic test split each target's true structure is "
                    "given; on real photos N is spread over the --structures retrieved structures. Reports the "
                    "top-1 reward and LPIPS-style distance (mean and 95% t-interval over targets) and the seconds "
                    "per target, as results.csv, summary.md, summary.json, curve.png (quality vs time, paper "
                    "Fig. 11) and report.html under --out. See docs/eval.md.")
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                        help="policy checkpoint directory to evaluate (default: the released one under models/)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="a second checkpoint to compare with (e.g. the pre-trained one); paired differences "
                             "checkpoint - baseline are reported")
    parser.add_argument("--labels", default=None, metavar="A[,B]",
                        help="names of the models in the tables (default: the checkpoint directories' names)")
    parser.add_argument("--split", choices=("test", "real"), default="test",
                        help="test: synthetic held-out targets with their true structure; real: photos with "
                             "retrieved structures (default: test)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="test: a `matrl gen-data` dataset; its test split's rows are the targets")
    parser.add_argument("--graphs", default=None, metavar="NAME,...",
                        help="test without --data: library graphs whose renders (parameters drawn around the "
                             "authored values) are the targets (default: the checkpoint's held-out library graphs, "
                             "else those of the `online` pre-training preset)")
    parser.add_argument("--photos", type=Path, default=None, metavar="DIR",
                        help="real: directory of photos, searched recursively (e.g. ../shared/real_photos)")
    parser.add_argument("--targets", type=int, default=20,
                        help="number of targets, a seeded selection (0: every dataset row or photo; default: 20)")
    parser.add_argument("--target-seed", type=seed_arg, default=1,
                        help="which targets: seed of the renders / of the row or photo selection (default: 1)")
    parser.add_argument("--structures", type=positive_int, default=5,
                        help="real: library structures retrieved per photo (paper: 5; default: 5)")
    parser.add_argument("--samples", type=positive_int, default=5,
                        help="candidates per structure of the table setting: 1 greedy + SAMPLES-1 top-p "
                             "(paper: 5; default: 5); the budget STRUCTURES x SAMPLES is always evaluated")
    parser.add_argument("--budgets", type=_int_list, default=(), metavar="N,...",
                        help="further total candidate budgets per target, e.g. 5,25,50,150 (paper Fig. 11)")
    parser.add_argument("--refine", type=float, default=0.0, metavar="SECONDS",
                        help="also post-optimise every top-1 for this many seconds and report it as a second "
                             "setting (default: 0, off)")
    parser.add_argument("--res", type=int, default=None,
                        help="resolution of targets, candidates and the reward (default: the dataset's with --data, "
                             "else 256)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus of the sampled candidates (default: 0.9)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="sampling and executor seed (default: 0)")
    parser.add_argument("--device", type=device_or_auto, default="auto", help="torch device: auto (cuda when present), cpu, cuda:0, ...")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice); fix it to compare timings across runs")
    parser.add_argument("--grid-px", type=int, default=128, help="image side in the report's grids (default: 128)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="output directory")
    parser.set_defaults(run=run)


def _models(args: argparse.Namespace):
    from matrl.infer.evaluate import ModelSpec
    from policy.checkpoint import released_checkpoint
    from policy.checkpoint import read_checkpoint_info

    checkpoints = [args.checkpoint if args.checkpoint is not None else released_checkpoint()]
    if args.baseline is not None:
        checkpoints.append(args.baseline)
    for flag, path in zip(("--checkpoint", "--baseline"), checkpoints):
        if not path.is_dir():
            raise UserError(f"{flag} {path}: no such checkpoint directory")
        read_checkpoint_info(path)  # a CheckpointError naming the file before anything heavy loads
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(checkpoints) or not all(labels):
            raise UserError(f"--labels {args.labels!r}: give {len(checkpoints)} non-empty names, one per checkpoint")
    else:
        labels = [p.resolve().name for p in checkpoints]
        if len(labels) == 2 and labels[0] == labels[1]:
            labels = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in checkpoints]
        if len(set(labels)) < len(labels):
            labels = ["A", "B"]
    if len(set(labels)) < len(labels):
        raise UserError(f"--labels {args.labels!r}: the names must differ")
    return [ModelSpec(label, path) for label, path in zip(labels, checkpoints)]


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from matrl.errors import user_error_message
    from matrl.infer.evaluate import EvalConfig, Evaluator, load_targets
    from matrl.reports.eval_report import SUMMARY_COLUMNS, md_table, summary_rows, write_all

    check_output_dir(args.out, "--out")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.split == "real" and args.photos is None:
        raise UserError("--split real needs --photos DIR (a directory of photos, e.g. ../shared/real_photos)")
    if args.split == "real" and (args.data is not None or args.graphs is not None):
        raise UserError("--split real takes --photos, not --data or --graphs")
    if args.split == "test" and args.photos is not None:
        raise UserError("--photos is for --split real")
    if args.data is not None and args.graphs is not None:
        raise UserError("--graphs renders targets on the fly; with --data the dataset's test split is used: give one")
    if args.data is not None and not args.data.is_dir():
        raise UserError(f"--data {args.data}: no such dataset directory")
    res = args.res
    if res is None:
        from learner.dataset import load_manifest

        res = load_manifest(args.data).res if args.data is not None else 256
    try:
        config = EvalConfig(split=args.split, data=args.data, photos=args.photos, targets=args.targets,
                            graphs=[g.strip() for g in args.graphs.split(",") if g.strip()] if args.graphs else None,
                            target_seed=args.target_seed, structures=args.structures, samples=args.samples,
                            budgets=args.budgets, refine_s=args.refine, res=res, top_p=args.top_p,
                            seed=args.seed, device=args.device, grid_px=args.grid_px)
    except ValidationError as err:
        first = err.errors()[0]
        where = f"--{str(first['loc'][0]).replace('_', '-')}: " if first["loc"] else ""
        raise UserError(where + first["msg"].removeprefix("Value error, ")) from None
    models = _models(args)
    if config.photos is not None and not config.photos.is_dir():
        raise UserError(f"--photos {config.photos}: no such directory")
    try:  # bad targets (a missing graph, an empty split, no usable photo) and a stale retrieval index
        targets, skipped, source = load_targets(config, models[0].checkpoint)
        evaluator = Evaluator(models, config)
    except ValueError as err:
        if user_error_message(err) is not None:  # already one of the user-error types (dataset, checkpoint, graph)
            raise
        raise UserError(str(err)) from None
    result = evaluator.run(targets, progress=not args.no_progress, skipped=skipped, source=source)
    files = write_all(result, args.out)
    print("\n".join(md_table(SUMMARY_COLUMNS, summary_rows(result))))
    print(f"wrote {args.out}/ ({', '.join(sorted(p.name for p in files.values()))})")
    return 0
