"""`matrl pretrain --config CFG`: supervised pre-training by teacher forcing (resumes from the run dir)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from matrl.cli_args import check_device, check_output_dir, positive_int
from matrl.config import load_config, parse_overrides


def print_epoch(m: dict) -> None:
    print(f"epoch {m['epoch']:3d}  step {m['step']:6d}  train loss {m['train_loss']:.4f}  "
          f"val loss {m['val_loss']:.4f}  val token acc {m['val_token_accuracy']:.3f}  ({m['seconds']:.1f}s)",
          flush=True)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain", help="supervised pre-training of the policy on a synthetic dataset",
        description="Teacher-forcing pre-training (AdamW, clip 1.0, cosine with warm-up). Re-running the "
                    "same command resumes from the latest checkpoint in the run directory.")
    parser.add_argument("--config", required=True, help="YAML file, or a bundled preset: tiny, default")
    parser.add_argument("--data", type=Path, help="dataset directory (overrides data.root)")
    parser.add_argument("--out", type=Path, help="run directory (overrides out_dir)")
    parser.add_argument("--epochs", type=positive_int, help="overrides train.epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--ray", action="store_true",
                        help="run on Ray Train's TorchTrainer with DDP over distributed.num_workers workers")
    parser.add_argument("--workers", type=positive_int, help="overrides distributed.num_workers (with --ray)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from learner.pretrain import Pretrainer, PretrainConfig, WorkerContext, resolve_device

    overrides = parse_overrides(args.set)
    for key, value in (("data.root", args.data), ("out_dir", args.out), ("train.epochs", args.epochs),
                       ("distributed.num_workers", args.workers)):
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    config = load_config(PretrainConfig, "pretrain", args.config, overrides)
    check_output_dir(config.out_dir, "out_dir")
    if args.ray:
        from learner.pretrain_ray import pretrain_on_ray
        from matrl.jobs.ray_runtime import init_ray

        local = not os.environ.get("RAY_ADDRESS")
        if local:  # on a cluster the workers' machines, not this one, must have the device
            check_device(config.train.device, "train.device", allow_auto=True)
        started = init_ray()["started"]
        try:
            history = pretrain_on_ray(config)
        finally:
            if started:
                import ray

                ray.shutdown()
        for m in history:
            print_epoch(m.as_dict())
    else:
        device = check_device(config.train.device, "train.device", allow_auto=True)
        context = WorkerContext(device=resolve_device(device), report=lambda metrics, checkpoint: print_epoch(metrics))
        history = Pretrainer(config, context).fit()
    if not history:
        print(f"nothing to do: {config.out_dir} already holds all {config.train.epochs} epochs")
    print(f"checkpoints and TensorBoard logs in {config.out_dir}")
    return 0
