"""How RewardWorker throughput per process holds up as K processes score at once, per micro-batch
and allocator setting, with the per-sample time split (prepare / execute / render / reward).

No Ray, no gRPC: K spawned processes, one torch thread each, start together and score the
reward_load benchmark's 64-sample requests (one library graph, random parameters, the real photo
target when ../shared is there) for --duration seconds. Efficiency is
per-process samples/s at K against K = 1 for the same configuration. This is what chose
RewardConfig's CPU default of one sample per call (docs/benchmarks.md).

    python benchmarks/reward_worker_scaling.py                              # K 1,2; 1 and 4 per call
    python benchmarks/reward_worker_scaling.py --workers 1,16,60 --configs 1,2,4,1:noretain
    python benchmarks/reward_worker_scaling.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reward_load, also in spawned processes


@dataclass(frozen=True)
class Point:
    workers: int
    micro_batch: int
    retain_freed_memory: bool = True


def parse_config(text: str) -> tuple[int, bool]:
    """'MICRO_BATCH[:noretain]' -> (micro_batch, retain_freed_memory)."""
    micro_batch, *flags = text.split(":")
    if set(flags) - {"noretain"}:
        raise argparse.ArgumentTypeError(f"unknown flags in {text!r}; the one flag is noretain")
    return int(micro_batch), not flags


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="comma-separated process counts; the first is the baseline")
    p.add_argument("--configs", default="1,4",
                   help="comma-separated MICRO_BATCH[:noretain] (noretain: RewardConfig.retain_freed_memory off)")
    p.add_argument("--graph", default="red_bricks")
    p.add_argument("--res", type=int, default=None, help="executor resolution (256; --quick 64)")
    p.add_argument("--duration", type=float, default=None, help="seconds per point (15; --quick 2)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true", help="print the rows as JSON last")
    args = p.parse_args(argv)
    args.workers = [int(k) for k in args.workers.split(",")]
    args.configs = [parse_config(c) for c in args.configs.split(",")]
    args.res = args.res or (64 if args.quick else 256)
    args.duration = args.duration or (2.0 if args.quick else 15.0)
    return args


def score_for(point: Point, graph: str, res: int, duration: float, start, results) -> None:
    """One process: build and warm a worker, wait for the others, score for `duration` seconds."""
    import torch

    from reward_load import load_workload
    from reward_service.config import RewardConfig
    from reward_service.worker import RewardWorker

    torch.set_num_threads(1)
    _, requests, _ = load_workload(argparse.Namespace(graph=graph, samples=64, res=res))
    worker = RewardWorker(RewardConfig(res=res, micro_batch=point.micro_batch,
                                       retain_freed_memory=point.retain_freed_memory))
    worker.score(requests[0])
    start.wait()
    began, samples, phases, i = time.perf_counter(), 0, {}, 0
    while time.perf_counter() - began < duration:
        scored = worker.score(requests[i % len(requests)])
        i += 1
        samples += sum(r.ok for r in scored)
        for phase in ("prepare", "execute", "render", "reward"):
            phases[phase] = phases.get(phase, 0.0) + scored[0].timings[phase] * len(scored)
    seconds = time.perf_counter() - began
    results.put({"samples_per_s": samples / seconds,
                 **{f"{k}_ms": 1000 * v / max(samples, 1) for k, v in phases.items()}})


def config_of(row: dict) -> tuple[int, bool]:
    return row["micro_batch"], row["retain_freed_memory"]


def measure(point: Point, args) -> dict:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(point.workers), context.Queue()
    processes = [context.Process(target=score_for, args=(point, args.graph, args.res, args.duration, start, results))
                 for _ in range(point.workers)]
    for process in processes:
        process.start()
    rows = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    per_process = sum(r["samples_per_s"] for r in rows) / len(rows)
    phases = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.endswith("_ms")}
    return {**asdict(point), "samples_per_s": per_process * len(rows), "per_process": per_process, **phases}


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [measure(Point(k, *config), args) for k in args.workers for config in args.configs]
    base = {config_of(r): r["per_process"] for r in rows if r["workers"] == args.workers[0]}
    for r in rows:
        r["efficiency"] = r["per_process"] / base[config_of(r)]
    print(f"RewardWorker scaling: graph {args.graph} at {args.res}², 64-sample requests, {args.duration:g} s per "
          f"point, {os.cpu_count()} CPUs")
    print(f"{'K':>4} {'per call':>8} {'retain':>6} {'samples/s':>10} {'per proc':>9} {'eff':>5} "
          f"{'prep ms':>8} {'exec ms':>8} {'render ms':>9} {'reward ms':>9}")
    for r in rows:
        print(f"{r['workers']:>4} {r['micro_batch']:>8} {'on' if r['retain_freed_memory'] else 'off':>6} "
              f"{r['samples_per_s']:>10.1f} {r['per_process']:>9.2f} {r['efficiency']:>5.2f} {r['prepare_ms']:>8.1f} "
              f"{r['execute_ms']:>8.1f} {r['render_ms']:>9.1f} {r['reward_ms']:>9.1f}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
