"""Online pre-training throughput: samples/s, the data-time fraction and a per-phase breakdown.

One process runs `learner.pretrain_online.OnlinePretrainer`'s stream and training step by hand:

1. a profiled pass (the device is synchronised after every phase) gives the time per step of each
   phase: structure draw, parameter draw (+ quantisation), execute, render, degeneracy check,
   augment, encode, and the policy's forward/backward/optimizer step;
2. an unprofiled pass (no extra synchronisation: what training does, with `data.prefetch_chunks`
   chunks made ahead in a background thread) gives samples/s and the data fraction = time spent
   waiting for the next batch / (that + time in `train_step`).

With `--ray-workers 1,2` it then runs `pretrain_on_ray` for each worker count (DDP, one stream per
rank) and reports the training samples/s of the last round and the scaling efficiency.

    python benchmarks/pretrain_online.py --quick                           # CPU, 64², seconds
    python benchmarks/pretrain_online.py --config online --device cuda     # one GPU, 256², the preset
    python benchmarks/pretrain_online.py --config online --device cuda --set train.batch_size=1024 \\
        --set data.samples_per_structure=2048
    python benchmarks/pretrain_online.py --config online --device cuda --ray-workers 1,2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learner.online_data import PHASES, BatchPrefetcher  # noqa: E402
from learner.pretrain import PretrainConfig  # noqa: E402
from learner.pretrain_online import OnlinePretrainer  # noqa: E402
from matrl.config import load_config, parse_overrides  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: PretrainConfig, warmup: int, steps: int) -> dict:
    """Profiled and unprofiled passes over `steps` steps after `warmup` (compilation, caches), both
    rounded up to whole chunks."""
    trainer = OnlinePretrainer(config)
    stream, device = trainer.stream, trainer.device
    whole = stream.chunk_steps  # measure whole chunks: a chunk's cost lands on its first step
    warmup, steps = -(-warmup // whole) * whole, max(1, -(-steps // whole)) * whole
    try:
        for step in range(warmup):
            trainer.train_step(stream.batch(step))
        phases = dict.fromkeys(list(PHASES) + ["forward_backward"], 0.0)
        stream.profile = True
        samples = 0
        for step in range(warmup, warmup + steps):
            batch = stream.batch(step)
            for name, seconds in batch.seconds.items():
                phases[name] += seconds
            _sync(device)
            started = time.perf_counter()
            trainer.train_step(batch)
            _sync(device)
            phases["forward_backward"] += time.perf_counter() - started
            samples += batch.size
        stream.profile = False
        data_s = train_s = 0.0
        kept = drawn = 0
        _sync(device)
        first, last = warmup + steps, warmup + 2 * steps
        depth = config.data.prefetch_chunks
        prefetcher = BatchPrefetcher(stream, first, last, depth) if depth else None
        for step in range(first, last):
            started = time.perf_counter()
            batch = prefetcher.next(step) if prefetcher else stream.batch(step)
            middle = time.perf_counter()
            trainer.train_step(batch)  # ends with loss.item(): the step's work is done
            data_s += middle - started
            train_s += time.perf_counter() - middle
            kept, drawn = kept + batch.size, drawn + batch.drawn
        if prefetcher is not None:
            prefetcher.close()
    finally:
        stream.close()
    profiled_total = sum(phases.values())
    return {
        "device": str(device), "res": config.data.res, "batch_size": config.train.batch_size,
        "structures_per_chunk": config.data.structures_per_chunk,
        "samples_per_structure": stream.samples_per_structure, "chunk_steps": stream.chunk_steps,
        "compile": config.data.compile,
        "precision": config.train.precision, "prefetch_chunks": config.data.prefetch_chunks, "steps": steps,
        "samples_per_s": kept / (data_s + train_s), "data_fraction": data_s / (data_s + train_s),
        "kept_fraction": kept / max(drawn, 1),
        "phase_ms_per_step": {k: 1000 * v / steps for k, v in phases.items()},
        "phase_fraction": {k: v / profiled_total for k, v in phases.items()},
        "profiled_samples_per_s": samples / profiled_total,
    }


def ray_scaling(config: PretrainConfig, workers: list[int], num_cpus: int | None) -> list[dict]:
    """Training samples/s of the last round of a short `pretrain_on_ray` run per worker count."""
    import ray

    from learner.pretrain_ray import pretrain_on_ray

    rows = []
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        for count in workers:
            out = Path(tempfile.mkdtemp(prefix=f"online_ray_{count}_"))
            run = config.model_copy(update={"out_dir": out, "distributed": config.distributed.model_copy(
                update={"num_workers": count})})
            last = pretrain_on_ray(run)[-1]
            rows.append({"workers": count, "samples_per_s": last.samples_per_s, "data_fraction": last.data_fraction,
                         "steps": last.step})
    finally:
        ray.shutdown()
    base = rows[0]
    for row in rows:
        row["efficiency"] = row["samples_per_s"] / (row["workers"] / base["workers"] * base["samples_per_s"])
    return rows


def print_table(result: dict) -> None:
    print(f"\nonline pre-training on {result['device']}: {result['res']}², batch {result['batch_size']}, chunks of "
          f"{result['structures_per_chunk']} structures x {result['samples_per_structure']} samples "
          f"({result['chunk_steps']} steps), compile={result['compile']}, precision={result['precision']}, "
          f"{result['steps']} steps per pass")
    print(f"| phase | ms/step | share of a profiled step |\n|---|---:|---:|")
    for name, ms in result["phase_ms_per_step"].items():
        print(f"| {name} | {ms:.1f} | {result['phase_fraction'][name]:.0%} |")
    print(f"\nunprofiled (prefetch_chunks={result['prefetch_chunks']}): {result['samples_per_s']:,.0f} samples/s, "
          f"waiting for data {result['data_fraction']:.0%} of the step "
          f"(profiled, no overlap: {result['profiled_samples_per_s']:,.0f} samples/s); "
          f"{result['kept_fraction']:.1%} of drawn samples kept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="online_tiny", help="pre-training preset or YAML (data.source: online)")
    parser.add_argument("--device", default=None, help="overrides train.device (cpu, cuda)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--warmup", type=int, default=None, help="steps before measuring (default 2 CPU, 10 CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per pass (default 3 CPU, 30 CUDA)")
    parser.add_argument("--quick", action="store_true", help="CPU, 64², batch 16: runs in seconds")
    parser.add_argument("--ray-workers", default=None, help="also run Ray Train DDP with these worker counts, "
                                                             "e.g. 1,2 (GPUs when distributed.use_gpu)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    parser.add_argument("--json", action="store_true", help="print the result as JSON last")
    args = parser.parse_args()

    overrides = parse_overrides(args.set)
    if args.quick:
        overrides = {"train.device": "cpu", "data.res": 64, "train.batch_size": 16, "train.torch_threads": 1,
                     "data.val_samples_per_structure": 1, **overrides}
    if args.device:
        overrides["train.device"] = args.device
    overrides.setdefault("out_dir", tempfile.mkdtemp(prefix="pretrain_online_bench_"))
    config = load_config(PretrainConfig, "pretrain", args.config, overrides)
    if config.data.source != "online":
        parser.error(f"--config {args.config}: data.source must be online")
    cuda = config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available())
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    steps = args.steps if args.steps is not None else (30 if cuda else 3)
    result = measure(config, warmup, steps)
    print_table(result)
    if args.ray_workers:
        workers = [int(w) for w in args.ray_workers.split(",")]
        run = config.model_copy(update={"train": config.train.model_copy(
            update={"steps": steps + warmup, "eval_every": steps + warmup})})
        result["ray"] = ray_scaling(run, workers, args.num_cpus)
        print("\n| Ray Train workers | samples/s (last round) | efficiency | data fraction |\n|---:|---:|---:|---:|")
        for row in result["ray"]:
            print(f"| {row['workers']} | {row['samples_per_s']:,.0f} | {row['efficiency']:.2f} | "
                  f"{row['data_fraction']:.0%} |")
    result["host"] = {"cpus": os.cpu_count(), "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
