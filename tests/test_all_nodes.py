"""Properties every registered node type must have: range, finiteness, tiling, determinism, batching."""

import pytest
import torch

from graph_executor.schema import PortKind
from graph_executor.registry import load_node_library
from tests.node_harness import node_types, random_params, run_node, seam_ratio, tileable_input

B = 3


def test_library_has_enough_node_types():
    assert len(node_types()) >= 45


@pytest.mark.parametrize("type", node_types())
def test_node_outputs_are_finite_in_range_and_tile(type):
    spec = load_node_library()[type]
    params = random_params(type, B, seed=1)
    out = run_node(type, params, seeds=[1, 2, 3])
    assert set(out) == set(spec.outputs)
    for port, x in out.items():
        channels = 3 if spec.outputs[port] is PortKind.COLOR else 1
        assert x.shape == (B, channels, 64, 64), (port, x.shape)
        assert torch.isfinite(x).all(), port
        assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5, (port, x.min().item(), x.max().item())
        assert seam_ratio(x) <= 1.5, f"{type}.{port} does not tile (seam ratio {seam_ratio(x):.2f})"


@pytest.mark.parametrize("type", node_types())
def test_node_is_deterministic_and_batch_equals_single_runs(type):
    spec = load_node_library()[type]
    params = random_params(type, B, seed=2)
    seeds = [5, 6, 7]
    inputs = {port: tileable_input(B, 3 if kind is PortKind.COLOR else 1, 64, i)
              for i, (port, kind) in enumerate(spec.inputs.items())}
    first = run_node(type, params, seeds, inputs=inputs)
    again = run_node(type, params, seeds, inputs=inputs)
    for port in first:
        assert torch.equal(first[port], again[port]), port
    for i in range(B):
        single = run_node(type, params[i:i + 1], seeds[i:i + 1],
                          inputs={k: v[i:i + 1] for k, v in inputs.items()})
        for port in first:
            assert torch.allclose(first[port][i:i + 1], single[port], atol=1e-5), (port, i)


@pytest.mark.parametrize("type", [t for t in node_types()
                                  if any(p.name == "seed" for p in load_node_library()[t].params)])
def test_seeded_nodes_change_with_seed(type):
    params = random_params(type, 1, seed=3)
    a = run_node(type, params, seeds=[1])
    b = run_node(type, [dict(params[0], seed=(params[0]["seed"] + 1) % 9999)], seeds=[1])
    assert any(not torch.equal(a[p], b[p]) for p in a)
