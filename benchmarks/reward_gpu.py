"""The reward path on one device: executor alone, executor + render, and RewardWorker.score end to
end, with the worker's per-phase breakdown, for the median library graph on *sampled* parameters.

Requests carry token rows (what rollout workers send) of `graph_executor.sampling` draws around
the graph's authored values; the target is a render of the graph's defaults. Each row is the
median of --repeats timed runs after a warm-up run (which also compiles, with --compile). On CUDA
every timing synchronises; the worker's phases come from its own CUDA-event timings.

    python benchmarks/reward_gpu.py --device cuda                          # eager, batches 256,1024,4096
    python benchmarks/reward_gpu.py --device cuda --compile both           # + compiled rows at the largest batch
    python benchmarks/reward_gpu.py --device cuda --cnn-autocast bfloat16
    python benchmarks/reward_gpu.py --device cpu --res 64 --batch 4,16     # about a minute on one core

Columns: samples/s of the executor alone (`Plan.run`), executor + render, the worker end to end
(`RewardWorker.score`, one request of `batch` samples scored in one call), the worker's share of
the executor-alone rate, and ms per sample of each worker phase. Host rows: ms per sample to turn
tokens into validated parameter tensors, per sample (the old path) and batched (the worker's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from executor import median_graph  # noqa: E402  (benchmarks/executor.py: the graph it reports)

from graph_executor.compiled import compiled  # noqa: E402
from graph_executor.executor import Plan  # noqa: E402
from graph_executor.render import render_flash  # noqa: E402
from graph_executor.sampling import sample_parameters  # noqa: E402
from policy.tokenizer import GraphTokenizer  # noqa: E402
from reward_service.api import ScoreRequest  # noqa: E402
from reward_service.config import RewardConfig  # noqa: E402
from reward_service.timing import PHASES  # noqa: E402
from reward_service.worker import RewardWorker  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (cuda: 256,1024,4096; cpu: 4,16)")
    p.add_argument("--res", type=int, default=256, help="executor resolution")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile'd executor and renderer: off, on, or both side by side")
    p.add_argument("--compile-batches", default=None,
                   help="batches that get compiled rows (default: the largest; each new size compiles for minutes)")
    p.add_argument("--cnn-autocast", choices=["off", "bfloat16"], default="off", help="RewardConfig.cnn_autocast")
    p.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="RewardConfig.tf32 off: float32 convolutions in the reward CNN (CUDA)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="parameter draws and executor seeds")
    p.add_argument("--json", action="store_true", help="print the rows as JSON last")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    args.batch = [int(b) for b in (args.batch or ("256,1024,4096" if cuda else "4,16")).split(",")]
    args.compile_batches = ([int(b) for b in args.compile_batches.split(",")] if args.compile_batches
                            else [max(args.batch)])
    return args


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up, synchronising a GPU around each."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def host_costs(plan: Plan, tokenizer: GraphTokenizer, tokens: np.ndarray) -> dict[str, float]:
    """ms per sample from tokens to validated tensors: per sample (detokenize + stack([one])), as the
    worker did before, and for the batch at once (param_columns + stack_columns), as it does now."""
    rows = tokens[:min(len(tokens), 256)]
    started = time.perf_counter()
    for row in rows:
        plan.stack([tokenizer.detokenize(row)])
    per_sample = (time.perf_counter() - started) / len(rows)
    started = time.perf_counter()
    plan.stack(tokenizer.detokenize_batch(tokens))
    stacked = (time.perf_counter() - started) / len(tokens)
    started = time.perf_counter()
    plan.stack_columns(tokenizer.param_columns(tokens), len(tokens))
    columns = (time.perf_counter() - started) / len(tokens)
    return {"per_sample_ms": per_sample * 1e3, "batched_stack_ms": stacked * 1e3, "columns_ms": columns * 1e3}


def measure(args, plan: Plan, tokenizer: GraphTokenizer, tokens: np.ndarray, target: np.ndarray,
            batch: int, compile: bool) -> dict:
    device = torch.device(args.device)
    rows = tokens[:batch]
    params = plan.stack_columns(tokenizer.param_columns(rows), batch, device=device)
    seeds = torch.arange(args.seed, args.seed + batch, device=device)
    render = compiled(render_flash) if compile else render_flash
    execute_s = timed(lambda: plan.run(params, res=args.res, seed=seeds, device=device, compile=compile),
                      device, args.repeats)
    render_s = timed(lambda: render(plan.run(params, res=args.res, seed=seeds, device=device, compile=compile)),
                     device, args.repeats)
    config = RewardConfig(res=args.res, device=args.device, micro_batch=batch, compile=compile,
                          cnn_autocast=args.cnn_autocast, tf32=args.tf32, torch_threads=args.threads,
                          default_timeout_s=3600)
    worker = RewardWorker(config)
    request = ScoreRequest(f"lib:{plan.graph.name}", list(range(args.seed, args.seed + batch)), target,
                           tokens=rows.tolist())
    last = {}

    def score():
        results = worker.score(request)
        if not all(r.ok for r in results):
            raise RuntimeError(f"failed samples: {[r.error for r in results if not r.ok][:3]}")
        last["timings"] = results[0].timings
    worker_s = timed(score, device, args.repeats)
    phases = {f"{k}_ms": last["timings"][k] * 1e3 for k in PHASES}
    return {"device": str(device), "res": args.res, "batch": batch, "compiled": compile,
            "cnn_autocast": args.cnn_autocast, "tf32": args.tf32,
            "executor_per_s": batch / execute_s, "executor_render_per_s": batch / render_s,
            "worker_per_s": batch / worker_s, "worker_vs_executor": execute_s / worker_s, **phases}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    graph = median_graph()
    plan = Plan(graph)
    tokenizer = GraphTokenizer(graph)
    tokens = np.array([tokenizer.tokenize(s) for s in sample_parameters(graph, max(args.batch), args.seed)])
    target = (render_flash(plan.run(plan.stack(), res=args.res))[0].permute(1, 2, 0).numpy() * 255 + 0.5
              ).astype(np.uint8)
    name = torch.cuda.get_device_name(torch.device(args.device)) if torch.device(args.device).type == "cuda" \
        else f"cpu ({args.threads} thread{'s' if args.threads > 1 else ''})"
    print(f"graph: {graph.name}, {len(graph.nodes)} nodes, {len(tokenizer)} slots; {args.res}², sampled parameters; "
          f"device {name}; cnn_autocast {args.cnn_autocast}, tf32 {args.tf32}", flush=True)
    host = host_costs(plan, tokenizer, tokens)
    print(f"tokens -> validated tensors, ms per sample: per sample {host['per_sample_ms']:.3f}, "
          f"batched Plan.stack {host['batched_stack_ms']:.3f}, batched columns {host['columns_ms']:.4f} "
          f"(batch {len(tokens)})", flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows = []
    for compile in modes:
        for batch in args.batch:
            if compile and batch not in args.compile_batches:
                continue
            rows.append(measure(args, plan, tokenizer, tokens, target, batch, compile))
            r = rows[-1]
            print(f"  measured batch {batch}{' compiled' if compile else ''}: worker {r['worker_per_s']:.0f}/s",
                  flush=True)
    head = f"{'mode':9s} {'batch':>6s} {'executor/s':>11s} {'+render/s':>10s} {'worker/s':>9s} {'w/exec':>7s}"
    print("\n" + head + "".join(f" {k:>9s}" for k in PHASES) + "   (phases: ms per sample)")
    for r in rows:
        print(f"{'compiled' if r['compiled'] else 'eager':9s} {r['batch']:6d} {r['executor_per_s']:11.1f} "
              f"{r['executor_render_per_s']:10.1f} {r['worker_per_s']:9.1f} {r['worker_vs_executor']:7.2f}"
              + "".join(f" {r[f'{k}_ms']:9.3f}" for k in PHASES))
    if args.json:
        print(json.dumps({"graph": graph.name, "host": host, "rows": rows}))


if __name__ == "__main__":
    main()
