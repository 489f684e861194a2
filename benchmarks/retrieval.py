"""Retrieval index: build time, query latency, and how often a fresh render finds its own structure.

Builds an index of the bundled library (or loads one with --index), then renders `--queries`
fresh draws of every graph (another seed: new parameters and executor seeds, never an indexed
render) and counts how often the graph's own structure is the top-1 / within the top-5.

    python benchmarks/retrieval.py --res 64 --per-graph 4 --queries 2         # the test's setting
    python benchmarks/retrieval.py --index policy/data/library_index.arrow --query-res 256
    python benchmarks/retrieval.py ... --json                                 # summary JSON last
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from graph_executor.library import library_graphs
from policy.retrieval import RetrievalIndex, render_samples


def hit_rates(index: RetrievalIndex, graphs: dict, queries: int, res: int, seed: int) -> dict:
    """Top-1 / top-5 hit rates over fresh renders of `graphs`, and the misses (graph -> top-1 found)."""
    top1 = top5 = total = 0
    misses: dict[str, list[str]] = {}
    for gid, graph in graphs.items():
        images, _ = render_samples(graph, gid, queries, res, seed)
        if not images:
            continue
        for found in index.retrieve_batch(torch.stack(images), k=5):
            ids = [r.structure_id for r in found]
            total += 1
            top1 += ids[0] == gid
            top5 += gid in ids
            if ids[0] != gid:
                misses.setdefault(gid, []).append(ids[0])
    return {"queries": total, "top1": top1 / total, "top5": top5 / total, "misses": misses}


def query_latency(index: RetrievalIndex, res: int, batch: int, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds per image of retrieve_batch on random images (embedding + search).
    CPU time is the steadier figure on a shared machine."""
    images = torch.rand(batch, 3, res, res)
    index.retrieve_batch(images, k=5)
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        index.retrieve_batch(images, k=5)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(wall) / batch, statistics.median(cpu) / batch


def search_latency(index: RetrievalIndex, batch: int, repeats: int) -> float:
    """Median seconds per query of the search alone (scores + top-k of precomputed embeddings)."""
    embedded = index.embeddings[:batch] + 0.01
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        scores = index.scores(embedded)
        scores.argsort(axis=1)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="load this index instead of building one")
    parser.add_argument("--res", type=int, default=64, help="render resolution of the built index")
    parser.add_argument("--per-graph", type=int, default=4, help="renders per graph in the built index")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built index")
    parser.add_argument("--queries", type=int, default=2, help="fresh renders per graph to query with")
    parser.add_argument("--query-res", type=int, default=None, help="resolution of the queries (default: --res)")
    parser.add_argument("--query-seed", type=int, default=12345, help="seed of the fresh query draws")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the latency measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    graphs = library_graphs()
    started = time.perf_counter()
    if args.index:
        index = RetrievalIndex.load(args.index)
        build_s = None
        res = index.meta["res"]
    else:
        index = RetrievalIndex.build(graphs, per_graph=args.per_graph, res=args.res, seed=args.seed, progress=False)
        build_s = time.perf_counter() - started
        res = args.res
    query_res = args.query_res or res
    rates = hit_rates(index, graphs, args.queries, query_res, args.query_seed)
    single, single_cpu = query_latency(index, query_res, 1, args.repeats)
    batched, batched_cpu = query_latency(index, query_res, 16, max(1, args.repeats // 2))
    search = search_latency(index, 64, 20)
    summary = {"graphs": len(index.structures()), "entries": len(index), "res": res, "query_res": query_res,
               "per_graph": index.meta["per_graph"], "build_s": build_s, "build_seconds": index.meta.get("seconds"),
               "top1": rates["top1"], "top5": rates["top5"], "queries": rates["queries"],
               "latency_ms_single": single * 1e3, "latency_ms_per_image_batch16": batched * 1e3,
               "cpu_ms_single": single_cpu * 1e3, "cpu_ms_per_image_batch16": batched_cpu * 1e3,
               "search_us_per_query": search * 1e6,
               "misses": rates["misses"], "threads": args.threads}
    print(f"| graphs | entries | res | query res | per graph | build s | top-1 | top-5 | queries | "
          f"ms/query (1) | CPU ms/query (1) | ms/query (16) | CPU ms/query (16) | search µs/query |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    build = f"{build_s:.1f}" if build_s is not None else "-"
    print(f"| {summary['graphs']} | {summary['entries']} | {res} | {query_res} | {summary['per_graph']} | {build} | "
          f"{rates['top1']:.3f} | {rates['top5']:.3f} | {rates['queries']} | {single * 1e3:.1f} | "
          f"{single_cpu * 1e3:.1f} | {batched * 1e3:.1f} | {batched_cpu * 1e3:.1f} | {search * 1e6:.1f} |")
    for gid, found in sorted(rates["misses"].items()):
        print(f"  miss: {gid} -> {', '.join(found)}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
