"""Policy sampler throughput: sampled tokens/s against batch size, KV cache vs re-running the prefix.

The KV-cache sampler (`policy.sampler.Sampler`) and the reference that re-runs the whole model on
the prefix at every step (`sample_by_rerun`, how ProcMatRL samples) draw the same tokens for a seed;
both are timed in the same run on the same structure, image tokens and weights.

    python benchmarks/sampler.py                  # CPU table, and CUDA (1,000-slot graph) when present
    python benchmarks/sampler.py --quick --json   # short CPU run; prints the summary JSON last

The structure is a chain of real node types (generator -> filter units, blended) sized to the slot count; the
image tokens are EfficientNet-Lite0's for a render of that graph; the policy's weights are freshly
initialised (speed does not depend on them). Tokens/s counts every sampled token (B x S). On CUDA,
`/graph` > 1 samples several sequences per (graph, image), which then share one cross-attention
memory (how rollouts sample N trajectories per target).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch

from graph_executor.executor import Plan
from graph_executor.ir import Graph, parse_graph
from graph_executor.render import render_flash
from graph_executor.registry import load_node_library
from policy.batching import collate
from policy.encoders import EfficientNetLite0Encoder
from policy.model import MaterialPolicy, PolicyConfig
from policy.sampler import Sampler, SamplingConfig, sample_by_rerun
from policy.tokenizer import GraphTokenizer


def chain_graph(target_slots: int) -> Graph:
    """Generator -> filter units blended in a chain until the graph has >= target_slots slots.

    Uses the registered generators and one-input gray filters with >= 5 slots each (in name
    order), so ~1,000 slots fit in the IR's 256-node limit.
    """
    registry = load_node_library()

    def slots_of(type_name: str) -> int:
        return sum(p.components for p in registry[type_name].params if p.predicted)

    def port(type_name: str) -> str:
        return next(iter(registry[type_name].outputs))

    generators = sorted(t for t, s in registry.items() if t != "output" and not s.inputs and slots_of(t) >= 5)
    filters = sorted(t for t, s in registry.items() if set(s.inputs) == {"in"} and s.inputs["in"].value == "gray"
                     and slots_of(t) >= 5)
    nodes: dict[str, dict] = {}
    total, last, i = 0, None, 0
    while total < target_slots:
        gen, filt = generators[i % len(generators)], filters[i % len(filters)]
        nodes[f"g{i}"] = {"type": gen}
        nodes[f"f{i}"] = {"type": filt, "inputs": {"in": f"g{i}.{port(gen)}"}}
        total += slots_of(gen) + slots_of(filt)
        if last is None:
            last = f"f{i}"
        else:
            nodes[f"b{i}"] = {"type": "blend", "params": {"mode": "overlay"},
                              "inputs": {"foreground": f"f{i}", "background": last}}
            total += slots_of("blend")
            last = f"b{i}"
        i += 1
    nodes["out"] = {"type": "output", "inputs": {"height": last}}
    return parse_graph({"name": f"chain_{target_slots}", "nodes": nodes})


def timed(fn, device: torch.device, repeats: int, warm_up: bool = True) -> float:
    """Best wall time of `repeats` calls, after one warm-up call (which captures the CUDA graphs)."""
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


@dataclass(frozen=True)
class Run:
    sequences: int
    per_graph: int = 1      # samples per (graph, image): they share one context
    dtype: str = "float32"
    rerun: bool = False     # also time the no-cache reference


def measure(device: torch.device, graph: Graph, runs: list[Run], repeats: int) -> list[dict]:
    encoder = EfficientNetLite0Encoder()
    plan = Plan(graph)
    target = render_flash(plan.run(plan.stack(batch=1), res=256, seed=0))
    image_tokens = encoder(target).tokens
    tok = GraphTokenizer(graph)
    torch.manual_seed(0)
    policy = MaterialPolicy(PolicyConfig.for_encoder(encoder, tok.vocab)).to(device).eval()
    rows = []
    for run in runs:
        graphs = run.sequences // run.per_graph
        batch = collate([tok.structure()]).repeat_interleave(graphs).to(device)
        img = image_tokens.expand(graphs, -1, -1).contiguous().to(device)
        tokens = graphs * run.per_graph * len(tok)
        sampler = Sampler(policy, SamplingConfig(dtype=run.dtype))
        cached = timed(lambda: sampler.sample(batch, img, seed=0, samples_per_graph=run.per_graph), device, repeats)
        row = {"device": device.type, "dtype": run.dtype, "sequences": graphs * run.per_graph,
               "per_graph": run.per_graph, "slots": len(tok), "cached_tokens_per_s": tokens / cached,
               "rerun_tokens_per_s": None, "speedup": None}
        if run.rerun:
            rerun = timed(lambda: sample_by_rerun(policy, batch, img, seed=0, samples_per_graph=run.per_graph),
                          device, 1, warm_up=False)
            row["rerun_tokens_per_s"] = tokens / rerun
            row["speedup"] = rerun / cached
        rows.append(row)
        print(_format(row), flush=True)
        del sampler
    return rows


HEADER = (f"{'device':<6} {'dtype':<9} {'seqs':>6} {'/graph':>6} {'slots':>6} {'KV cache tok/s':>15} "
          f"{'re-run tok/s':>13} {'speed-up':>9}")


def _format(row: dict) -> str:
    rerun = f"{row['rerun_tokens_per_s']:>13,.0f}" if row["rerun_tokens_per_s"] else f"{'-':>13}"
    speedup = f"{row['speedup']:>8.1f}x" if row["speedup"] else f"{'-':>9}"
    return (f"{row['device']:<6} {row['dtype']:<9} {row['sequences']:>6} {row['per_graph']:>6} {row['slots']:>6} "
            f"{row['cached_tokens_per_s']:>15,.0f} {rerun} {speedup}")


CUDA_RUNS = [Run(1), Run(64, rerun=True), Run(1024), Run(1024, 16),
             Run(1, dtype="bfloat16"), Run(256, dtype="bfloat16"), Run(1024, dtype="bfloat16"),
             Run(1024, 16, "bfloat16"), Run(4096, dtype="bfloat16"), Run(4096, 16, "bfloat16")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda", "both"], default="both")
    parser.add_argument("--cpu-slots", type=int, default=None, help="slots of the CPU graph (quick 128, else 256)")
    parser.add_argument("--cpu-batches", default=None, help="quick 1,16,64; else 1,16,64,256")
    parser.add_argument("--cpu-rerun-batches", default=None, help="quick 1,16; else 1,16,64")
    parser.add_argument("--cuda-slots", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    summary: dict = {}
    print(HEADER)
    if args.device in ("cpu", "both"):
        slots = args.cpu_slots or (128 if args.quick else 256)
        batches = _ints(args.cpu_batches or ("1,16,64" if args.quick else "1,16,64,256"))
        rerun = set(_ints(args.cpu_rerun_batches or ("1,16" if args.quick else "1,16,64")))
        runs = [Run(b, rerun=b in rerun) for b in batches]
        rows = measure(torch.device("cpu"), chain_graph(slots), runs, 1 if args.quick else 3)
        summary["cpu_tokens_per_s"] = round(max(r["cached_tokens_per_s"] for r in rows))
        compared = [r for r in rows if r["speedup"]]
        if compared:
            summary["kv_cache_speedup"] = round(compared[-1]["speedup"], 2)
    if args.device in ("cuda", "both") and torch.cuda.is_available():
        rows = measure(torch.device("cuda"), chain_graph(args.cuda_slots), CUDA_RUNS, 2)
        summary["cuda_device"] = torch.cuda.get_device_name()
        best = max(rows, key=lambda r: r["cached_tokens_per_s"])
        summary["cuda_tokens_per_s"] = round(best["cached_tokens_per_s"])
        summary["cuda_best"] = {k: best[k] for k in ("dtype", "sequences", "per_graph", "slots")}
        compared = [r for r in rows if r["speedup"]]
        if compared:
            summary["cuda_kv_cache_speedup"] = round(compared[-1]["speedup"], 2)
            summary["cuda_best_vs_rerun"] = round(best["cached_tokens_per_s"] / compared[-1]["rerun_tokens_per_s"], 1)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
