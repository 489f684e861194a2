"""The branch-free node paths (taken on GPUs and under torch.compile) compute what the CPU paths compute.

On a CPU the nodes may read parameters on the host to skip work or to group the batch by an
integer parameter; `graph_executor.nodes._common.FORCE_BRANCH_FREE` makes them take the GPU's
branch-free paths here, so both are compared on the same machine: every node type on random
parameters over its whole range, and library graphs on sampled parameters, to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import graph_executor.nodes._common as common
from graph_executor.executor import Plan
from graph_executor.library import library_graphs, load_library_graph
from graph_executor.sampling import sample_parameters
from tests.node_harness import node_types, random_params, run_node

# Graphs with the nodes whose paths differ (worley, voronoi_cells, blend modes, levels, transform_2d).
GRAPHS = ("brown_leather", "red_bricks", "cracked_mud", "hammered_copper")


@pytest.fixture
def both_paths():
    def run(fn):
        common.FORCE_BRANCH_FREE = False
        try:
            eager = fn()
            common.FORCE_BRANCH_FREE = True
            return eager, fn()
        finally:
            common.FORCE_BRANCH_FREE = False
    return run


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("type_", node_types())
def test_every_node_type_gives_the_same_output_on_both_paths(type_, both_paths):
    params = random_params(type_, 8, seed=5)
    eager, branch_free = both_paths(lambda: run_node(type_, params, list(range(8)), res=64))
    assert _max_diff(eager, branch_free) <= 1e-5


@pytest.mark.parametrize("res", [64, 128])
def test_cellular_nodes_with_mixed_scales_and_metrics_are_equal_bit_for_bit(res, both_paths):
    """Scales that do and do not divide the resolution, every metric, in one batch."""
    scales = [1, 2, 5, 6, 7, 13, 32, 32]
    worley = [{"scale": s, "jitter": j, "metric": m, "seed": i}
              for i, (s, j, m) in enumerate(zip(scales, [1.0, 0.5, 0.0, 0.9, 1.0, 0.3, 0.7, 1.0],
                                                ["euclidean", "manhattan", "chebyshev"] * 3))]
    eager, branch_free = both_paths(lambda: run_node("worley", worley, list(range(8)), res=res))
    assert all(torch.equal(eager[k], branch_free[k]) for k in eager)
    voronoi = [{"scale": max(2, s), "jitter": 0.8, "edge_width": 0.05 + 0.05 * i, "seed": i}
               for i, s in enumerate(scales)]
    eager, branch_free = both_paths(lambda: run_node("voronoi_cells", voronoi, list(range(8)), res=res))
    assert all(torch.equal(eager[k], branch_free[k]) for k in eager)


def test_blend_with_every_mode_in_one_batch(both_paths):
    from graph_executor.nodes.filters import BLEND_MODES
    params = [{"mode": m, "opacity": 0.3 + 0.05 * i} for i, m in enumerate(BLEND_MODES)]
    for type_ in ("blend", "blend_color"):
        eager, branch_free = both_paths(lambda: run_node(type_, params, list(range(len(params))), res=64))
        assert all(torch.equal(eager[k], branch_free[k]) for k in eager)


@pytest.mark.parametrize("name", GRAPHS)
def test_library_graphs_on_sampled_parameters(name, both_paths):
    graph = load_library_graph(name)
    plan = Plan(graph)
    params = plan.stack(sample_parameters(graph, 6, 11))
    eager, branch_free = both_paths(lambda: dict(plan.run(params, res=64, seed=list(range(6))).items()))
    assert _max_diff(eager, branch_free) <= 1e-5


@pytest.mark.slow
def test_every_library_graph_on_sampled_parameters(both_paths):
    worst = {}
    for name, graph in sorted(library_graphs().items()):
        plan = Plan(graph)
        params = plan.stack(sample_parameters(graph, 6, 11))
        eager, branch_free = both_paths(lambda: dict(plan.run(params, res=64, seed=list(range(6))).items()))
        worst[name] = _max_diff(eager, branch_free)
    assert max(worst.values()) <= 1e-5, {k: v for k, v in worst.items() if v > 1e-5}


@pytest.mark.gpu
def test_branch_free_nodes_do_not_wait_for_the_gpu():
    """On CUDA, worley, levels and transform_2d read nothing on the host; blend reads its modes once."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    counts = {type_: _host_reads(type_, random_params(type_, 8, seed=2))
              for type_ in ("worley", "levels", "transform_2d", "blend")}
    assert counts["worley"] == counts["levels"] == counts["transform_2d"] == 0, counts
    assert counts["blend"] <= 1, counts


class _CountHostReads(TorchFunctionMode):
    """Counts the tensor calls that must wait for a GPU (their result lives on the host, or their
    output size depends on the data): the CPU stand-in for torch's CUDA sync debug mode."""

    WAITS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "unique", "nonzero",
             "masked_select", "unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.WAITS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def test_branch_free_paths_read_the_host_at_most_once_without_a_gpu(monkeypatch):
    """The CPU run of the CUDA test below (which CI cannot run): on the branch-free paths worley,
    levels and transform_2d read nothing on the host and blend reads its modes in one transfer
    (two reads, torch.unique and .tolist(), once made the H200 test fail)."""
    from graph_executor.executor import NodeContext, _value_tensor
    from graph_executor.registry import load_node_library
    from graph_executor.schema import PortKind
    monkeypatch.setattr(common, "FORCE_BRANCH_FREE", True)
    counts = {}
    for type_ in ("worley", "levels", "transform_2d", "blend", "blend_color"):
        spec, params = load_node_library()[type_], random_params(type_, 8, seed=2)
        inputs = {port: torch.rand(len(params), 3 if kind is PortKind.COLOR else 1, 32, 32)
                  for port, kind in spec.inputs.items()}
        tensors = {p.name: _value_tensor(p, [ps[p.name] for ps in params], "cpu") for p in spec.params}
        ctx = NodeContext(32, len(params), torch.device("cpu"), torch.arange(len(params)), {})
        with _CountHostReads() as mode, torch.no_grad():
            spec.fn(ctx, inputs, tensors)
        counts[type_] = mode.reads
    assert counts["worley"] == counts["levels"] == counts["transform_2d"] == [], counts
    assert counts["blend"] == counts["blend_color"] == ["tolist"], counts


def _host_reads(type_: str, params: list[dict]) -> int:
    """Synchronising CUDA calls (torch's sync debug mode) made by one node function on CUDA."""
    import warnings

    from graph_executor.executor import NodeContext, _value_tensor
    from graph_executor.registry import load_node_library
    from graph_executor.schema import PortKind
    spec = load_node_library()[type_]
    inputs = {port: torch.rand(len(params), 3 if kind is PortKind.COLOR else 1, 64, 64, device="cuda")
              for port, kind in spec.inputs.items()}
    tensors = {p.name: _value_tensor(p, [ps[p.name] for ps in params], "cuda") for p in spec.params}
    ctx = NodeContext(64, len(params), torch.device("cuda"), torch.arange(len(params), device="cuda"), {})
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            spec.fn(ctx, inputs, tensors)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)
