"""Pre-training scaling on Ray Train: training samples/s and scaling efficiency against the DDP worker count.

For each worker count K in --workers, `learner.pretrain_ray.pretrain_on_ray` (TorchTrainer, DDP)
trains the same config from scratch in its own run directory `<out>/workers_<K>`, one count after
the other on one Ray cluster: with --gpu one GPU per worker and NCCL, otherwise CPU workers
(gloo, --cpus-per-worker torch threads each). `train.batch_size` is per worker, so K workers take
1/K of the steps of one with a K times larger global batch.

Throughput is the LAST epoch's training rows summed over ranks per second of its training steps
(`EpochMetrics.train_samples / train_seconds`: no validation, no checkpoint; the first epoch also
pays DataLoader start and CUDA/NCCL warm-up). Scaling efficiency at K is
samples/s(K) / (K / K0 x samples/s(K0)) against the smallest count K0 tried (1.0 is linear).
With K ranks a `DistributedSampler` pads the split to a multiple of K, so an epoch may count up
to K - 1 repeated rows; a streamed split (`data.streaming`) stops at the smallest rank's batches.

    python benchmarks/pretrain_ddp.py --quick --json     # CPU, tiny preset, 1,2 workers, generated 64² data
    python benchmarks/pretrain_ddp.py --data data/synthetic --config default --gpu --workers 1,2,4
    python benchmarks/pretrain_ddp.py --generate 192 --generated 100 --res 256 --data /tmp/ds --num-cpus 60 \\
        --config default --gpu --workers 1,2,4 --json   # renders the dataset first (Ray tasks), then trains

--generate PER_GRAPH renders a dataset into --data (default `<out>/data`) with `learner.datagen`
first: the bundled library graphs (--graphs) plus --generated random structures, at --res; an
existing dataset made with the same arguments is reused. --config is a bundled preset (tiny,
default) or a YAML path, --set KEY=VALUE overrides any key except those the benchmark sets itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Keys the benchmark sets for every run (from its own flags); --set must not change them.
CONTROLLED_KEYS = {"out_dir": "--out", "data.root": "--data", "train.epochs": "--epochs",
                   "distributed.num_workers": "--workers", "distributed.use_gpu": "--gpu",
                   "distributed.backend": "--gpu", "distributed.cpus_per_worker": "--cpus-per-worker"}
QUICK = {"config": "tiny", "workers": "1,2", "epochs": 2, "generate": 8, "res": 64}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default=None, help="comma-separated DDP worker counts (default 1,2)")
    p.add_argument("--config", default=None, help="bundled preset (tiny, default) or YAML path (default: default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2); the last one is measured")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL (default: CPU workers, gloo)")
    p.add_argument("--cpus-per-worker", type=int, default=None,
                   help="CPUs (and, on CPU, torch threads) per worker (default 1; with --gpu the config's)")
    p.add_argument("--data", type=Path, default=None, help="dataset directory made by `matrl gen-data`")
    p.add_argument("--generate", type=int, default=None, metavar="PER_GRAPH",
                   help="first render a dataset of PER_GRAPH samples per graph into --data")
    p.add_argument("--graphs", default="library", help="graph source for --generate, as `matrl gen-data --graphs`")
    p.add_argument("--generated", type=int, default=0, help="random structures added with --generate")
    p.add_argument("--res", type=int, default=None, help="image resolution for --generate (default 256)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directories go here (default: a temporary one, removed at the end)")
    p.add_argument("--address", default=None, help="existing Ray cluster; default: start a local one")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="CPU, tiny preset, workers 1,2, 2 epochs, 8 samples per library graph at 64² "
                        "(unless --data is given)")
    p.add_argument("--json", action="store_true", help="print the summary JSON as the last line")
    args = p.parse_args(argv)
    if args.quick:
        if args.gpu:
            p.error("--quick runs on CPU workers: drop --gpu")
        if args.data is None and args.generate is None:
            args.generate = QUICK["generate"]
        args.config = args.config or QUICK["config"]
        args.workers = args.workers or QUICK["workers"]
        args.res = args.res or QUICK["res"]
    args.config = args.config or "default"
    args.epochs = args.epochs or 2
    args.res = args.res or 256
    try:
        args.workers = sorted({int(k) for k in (args.workers or "1,2").split(",")})
    except ValueError:
        p.error(f"--workers {args.workers!r} must be comma-separated integers")
    if args.workers[0] < 1:
        p.error("--workers counts must be positive")
    if args.data is None and args.generate is None:
        p.error("give --data DIR (a dataset made by `matrl gen-data`) or --generate PER_GRAPH")
    return args


def config_overrides(args: argparse.Namespace, workers: int, out_dir: Path, data: Path) -> dict:
    """Dotted config keys of one run: --set, then the keys the benchmark controls."""
    from matrl.config import parse_override

    overrides = dict(parse_override(text) for text in args.set)
    for key in overrides.keys() & CONTROLLED_KEYS.keys():
        raise ValueError(f"--set {key}: the benchmark sets it; use {CONTROLLED_KEYS[key]}")
    overrides.update({"out_dir": str(out_dir), "data.root": str(data), "train.epochs": args.epochs,
                      "distributed.num_workers": workers, "distributed.use_gpu": args.gpu,
                      "distributed.backend": "nccl" if args.gpu else "gloo"})
    if args.cpus_per_worker is not None or not args.gpu:
        overrides["distributed.cpus_per_worker"] = args.cpus_per_worker or 1
    return overrides


# ---- measurement -------------------------------------------------------------------------------------

@dataclass
class WorkerRun:
    """One `pretrain_on_ray` call: its epochs and its wall time (Ray Train start included)."""

    workers: int
    history: list  # EpochMetrics, one per epoch
    wall_s: float


def generate_dataset(args: argparse.Namespace, root: Path) -> dict:
    from learner.datagen import GenDataConfig, collect_graphs, generate, with_generated_graphs

    started = time.perf_counter()
    graphs = with_generated_graphs(collect_graphs(args.graphs), args.generated, seed=0)
    summary = generate(GenDataConfig(out=root, per_graph=args.generate, res=args.res), graphs, progress=False)
    seconds = time.perf_counter() - started
    log(f"dataset {root}: {len(graphs)} graphs x {args.generate} at {args.res}², {summary.kept} samples rendered "
        f"({summary.units_skipped} of {summary.units_total} shards already there) in {seconds:.1f}s")
    return {"graphs": len(graphs), "per_graph": args.generate, "res": args.res, "rendered": summary.kept,
            "seconds": seconds}


def check_resources(args: argparse.Namespace, cpus_per_worker: int) -> None:
    """Ray Train waits forever for resources that the cluster lacks: refuse up front instead."""
    import ray

    have = ray.cluster_resources()
    k = args.workers[-1]
    need = {"CPU": k * cpus_per_worker, **({"GPU": k} if args.gpu else {})}
    short = {r: n for r, n in need.items() if have.get(r, 0) < n}
    if short:
        raise ValueError(f"--workers {k} needs {need} but the Ray cluster has "
                         f"{ {r: have.get(r, 0) for r in need} }; use fewer workers or --cpus-per-worker")


def build_config(args: argparse.Namespace, workers: int, run_dir: Path, data: Path):
    from learner.pretrain import PretrainConfig
    from matrl.config import load_config

    return load_config(PretrainConfig, "pretrain", args.config, config_overrides(args, workers, run_dir, data))


def run_workers(args: argparse.Namespace, workers: int, out: Path, data: Path) -> WorkerRun:
    from learner.pretrain_ray import pretrain_on_ray

    run_dir = out / f"workers_{workers}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} is not empty (pre-training would resume from it); choose a new --out")
    config = build_config(args, workers, run_dir, data)
    started = time.perf_counter()
    history = pretrain_on_ray(config)
    run = WorkerRun(workers, history, time.perf_counter() - started)
    last = history[-1]
    log(f"K={workers}: last epoch {last.train_samples} samples in {last.train_seconds:.2f}s = "
        f"{last.samples_per_s:.1f} samples/s, val loss {last.val_loss:.4f}, run {run.wall_s:.1f}s")
    return run


# ---- report ------------------------------------------------------------------------------------------

def scaling_rows(runs: list[WorkerRun]) -> list[dict]:
    """One row per worker count (ascending): the last epoch's throughput and quality, and the scaling
    efficiency against the smallest count, samples/s(K) / (K / K0 x samples/s(K0))."""
    runs = sorted(runs, key=lambda r: r.workers)
    base = runs[0]
    base_sps = base.history[-1].samples_per_s
    rows = []
    for run in runs:
        last = run.history[-1]
        ideal = run.workers / base.workers * base_sps
        steps = last.step - (run.history[-2].step if len(run.history) > 1 else 0)
        rows.append({"workers": run.workers, "samples_per_s": last.samples_per_s,
                     "scaling_efficiency": last.samples_per_s / ideal if ideal > 0 else float("nan"),
                     "train_samples": last.train_samples, "train_seconds": last.train_seconds,
                     "epoch_seconds": last.seconds, "steps_per_epoch": steps, "train_loss": last.train_loss,
                     "val_loss": last.val_loss, "val_token_accuracy": last.val_token_accuracy,
                     "run_seconds": run.wall_s, "epochs": [m.as_dict() for m in run.history]})
    return rows


TABLE = (("workers", "workers", "{}"), ("samples/s", "samples_per_s", "{:.1f}"),
         ("efficiency", "scaling_efficiency", "{:.3f}"), ("train rows", "train_samples", "{}"),
         ("train s", "train_seconds", "{:.2f}"), ("epoch s", "epoch_seconds", "{:.2f}"),
         ("steps", "steps_per_epoch", "{}"), ("train loss", "train_loss", "{:.4f}"),
         ("val loss", "val_loss", "{:.4f}"), ("val token acc", "val_token_accuracy", "{:.3f}"),
         ("run s", "run_seconds", "{:.1f}"))


def format_table(rows: list[dict]) -> str:
    lines = ["  ".join(f"{title:>13}" for title, _, _ in TABLE)]
    for row in rows:
        lines.append("  ".join(f"{fmt.format(row[key]):>13}" for _, key, fmt in TABLE))
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict:
    import torch

    info = {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpus"] = torch.cuda.device_count()
        info["gpu_name"] = torch.cuda.get_device_name(0)
    return info


def benchmark(args: argparse.Namespace, out: Path) -> dict:
    import ray

    data = args.data or out / "data"
    cpus_per_worker = build_config(args, args.workers[-1], out, data).distributed.cpus_per_worker  # checks --set
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        check_resources(args, cpus_per_worker)
        dataset = generate_dataset(args, data) if args.generate is not None else None
        runs = [run_workers(args, k, out, data) for k in args.workers]
    finally:
        ray.shutdown()
    rows = scaling_rows(runs)
    return {"rows": rows, "scaling_efficiency": rows[-1]["scaling_efficiency"], "workers": args.workers,
            "config": args.config, "overrides": args.set, "gpu": args.gpu, "cpus_per_worker": cpus_per_worker,
            "epochs": args.epochs, "data": str(data), "dataset": dataset, "out": str(out) if args.out else None,
            **machine()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pretrain_ddp_") as scratch:
        out = (args.out or Path(scratch)).resolve()
        try:
            summary = benchmark(args, out)
        except (ValueError, FileNotFoundError) as exc:  # config, dataset and resource errors
            print(f"pretrain_ddp: {exc}", file=sys.stderr)
            return 2
    device = (f"one {summary.get('gpu_name', 'GPU')} per worker" if args.gpu
              else f"{summary['cpus_per_worker']} CPU(s) per worker")
    print(f"pre-training scaling: config {' '.join([args.config, *args.set])}, {args.epochs} epochs, {device}, "
          f"data {summary['data']}; last epoch measured")
    print(format_table(summary["rows"]))
    lo, hi = summary["rows"][0], summary["rows"][-1]
    print(f"scaling {lo['workers']}->{hi['workers']} workers: efficiency {summary['scaling_efficiency']:.3f} "
          f"({hi['samples_per_s'] / lo['samples_per_s']:.2f}x samples/s)")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
