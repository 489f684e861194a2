"""Executor throughput: samples/s (execute + flash render) of the median library graph, CPU one thread and CUDA.

    python benchmarks/executor.py                 # full table: 256² and 512², batch 1/8/32, per-node breakdown
    python benchmarks/executor.py --quick --json  # fewer repeats; prints the summary JSON last
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from graph_executor.compiled import compiled
from graph_executor.executor import Plan
from graph_executor.library import library_graphs
from graph_executor.render import render_flash


def median_graph():
    graphs = sorted(library_graphs().values(), key=lambda g: (len(g.nodes), g.name))
    return graphs[len(graphs) // 2]


def throughput(plan: Plan, res: int, batch: int, device: str, repeats: int, compile: bool = False) -> float:
    params = plan.stack(batch=batch, device=device)
    seeds = list(range(batch))
    render = compiled(render_flash) if compile else render_flash

    def once():
        img = render(plan.run(params, res=res, seed=seeds, device=device, compile=compile))
        if device == "cuda":
            torch.cuda.synchronize()
        return img

    once()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def node_breakdown(plan: Plan, res: int, batch: int, device: str, compile: bool) -> list[tuple[str, str, float]]:
    params = plan.stack(batch=batch, device=device)
    plan.run(params, res=res, device=device, compile=compile)
    step_times: dict[str, float] = {}
    plan.run(params, res=res, device=device, step_times=step_times, compile=compile)
    types = {n.name: n.type for n in plan.graph.nodes.values()}
    return sorted(((name, types[name], t / batch) for name, t in step_times.items()), key=lambda r: -r[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda", "both"], default="both")
    parser.add_argument("--cuda-batches", default="256,1024,4096")
    parser.add_argument("--breakdown-batch", type=int, default=None, help="default: 8 on CPU, 1024 on CUDA")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA (lattice noises)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off",
                        help="CUDA rows through torch.compile'd node functions and renderer (both: side by side)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    graph = median_graph()
    plan = Plan(graph)
    predicted = sum(p.predicted for n in graph.nodes.values() for p in n.spec.params)
    print(f"graph: {graph.name} ({graph.category}), {len(graph.nodes)} nodes, {predicted} predicted parameters")
    repeats = 2 if args.quick else 5
    rows = []
    summary = {}
    if args.device in ("cpu", "both"):
        for res in (256, 512):
            per_batch = {}
            for batch in ((1, 8) if args.quick and res == 512 else (1, 8, 32)):
                per_batch[batch] = throughput(plan, res, batch, "cpu", repeats)
                rows.append(("cpu (1 thread)", res, batch, per_batch[batch]))
            summary[f"cpu_samples_per_s_per_core_{res}"] = round(max(per_batch.values()), 2)
            if res == 256:
                summary["batch_speedup_8"] = round(per_batch[8] / per_batch[1], 2)
    if args.device in ("cuda", "both") and torch.cuda.is_available():
        for use_compile in {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]:
            label = torch.cuda.get_device_name() + (" compiled" if use_compile else "")
            best = 0.0
            for batch in [int(b) for b in args.cuda_batches.split(",")]:
                rate = throughput(plan, 256, batch, "cuda", repeats, use_compile)
                rows.append((label, 256, batch, rate))
                best = max(best, rate)
            summary["cuda_compiled_samples_per_s_256" if use_compile else "cuda_samples_per_s_256"] = round(best, 1)
    print(f"\n{'device':36s} {'res':>5s} {'batch':>6s} {'samples/s':>10s}")
    for device, res, batch, rate in rows:
        print(f"{device:36s} {res:5d} {batch:6d} {rate:10.1f}")
    breakdown_device = "cuda" if args.device == "cuda" else "cpu"
    breakdown_batch = args.breakdown_batch or (1024 if breakdown_device == "cuda" else 8)
    breakdown_compiled = args.compile != "off" and breakdown_device == "cuda"
    print(f"\nper-node time, {breakdown_device}{' compiled' if breakdown_compiled else ''}, 256², "
          f"batch {breakdown_batch} (ms per sample)")
    for name, type_, seconds in node_breakdown(plan, 256, breakdown_batch, breakdown_device,
                                               breakdown_compiled)[: 12 if args.quick else None]:
        print(f"  {name:24s} {type_:22s} {seconds * 1e3:8.3f}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
