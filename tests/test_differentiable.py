"""Gradients through the node library: the `differentiable` flag of every parameter is checked against
what autograd actually gives, and the executor's grad path computes exactly what its no-grad path does."""

from __future__ import annotations

import pytest
import torch

from graph_executor.executor import NodeContext, Plan, _value_tensor
from graph_executor.library import load_library_graph
from graph_executor.registry import load_node_library
from graph_executor.render import render_flash
from graph_executor.schema import ParamKind, PortKind, P
from tests.node_harness import node_types, random_params, tileable_input

RES = 64
TRIALS = 6  # random parameter draws per node type; a gradient may vanish at some draws (clamps, unused shapes)


def _continuous(spec):
    return [p for p in spec.params if p.kind in (ParamKind.FLOAT, ParamKind.COLOR, ParamKind.VECTOR)]


def _run(type_name: str, trial: int, grad: bool):
    spec = load_node_library()[type_name]
    params = random_params(type_name, 2, 100 + trial)
    inputs = {port: tileable_input(2, 3 if kind is PortKind.COLOR else 1, RES, i)
              for i, (port, kind) in enumerate(spec.inputs.items())}
    tensors = {p.name: _value_tensor(p, [ps[p.name] for ps in params], "cpu") for p in spec.params}
    if grad:  # inputs too: inside a graph they carry gradients from upstream parameters
        for p in _continuous(spec):
            tensors[p.name].requires_grad_(True)
        for value in inputs.values():
            value.requires_grad_(True)
    ctx = NodeContext(RES, 2, torch.device("cpu"), torch.tensor([3, 4]), {})
    with torch.set_grad_enabled(grad):
        out = spec.fn(ctx, dict(inputs), dict(tensors))
    return out, tensors, inputs


def _gradients(type_name: str, trial: int) -> dict[str, torch.Tensor | None]:
    spec = load_node_library()[type_name]
    out, tensors, inputs = _run(type_name, trial, grad=True)
    weights = torch.Generator().manual_seed(trial)
    loss = sum((v * torch.rand(v.shape, generator=weights)).sum() for v in out.values())
    names = [p.name for p in _continuous(spec)]
    if not loss.requires_grad:
        return {n: None for n in names}
    grads = torch.autograd.grad(loss, [tensors[n] for n in names] + list(inputs.values()), allow_unused=True)
    return dict(zip(names, grads))


CONTINUOUS_TYPES = [t for t in node_types() if _continuous(load_node_library()[t])]


@pytest.mark.parametrize("type_name", node_types())
def test_grad_path_computes_the_same_outputs(type_name):
    """With autograd recording, nodes avoid `out=` buffers and some in-place steps; the values must not change."""
    for trial in range(2):
        reference, _, _ = _run(type_name, trial, grad=False)
        recorded, _, _ = _run(type_name, trial, grad=True)
        for port, value in reference.items():
            torch.testing.assert_close(recorded[port].detach(), value, rtol=1e-5, atol=1e-6,
                                       msg=f"{type_name}.{port} differs with autograd on")


@pytest.mark.parametrize("type_name", CONTINUOUS_TYPES)
def test_differentiable_flags_match_autograd(type_name):
    """A differentiable parameter gets a finite, non-zero gradient at some of a few random draws; a float
    marked non-differentiable (rounded, thresholded, hashed) gets none at any of them."""
    spec = load_node_library()[type_name]
    seen_nonzero = {p.name: False for p in _continuous(spec)}
    for trial in range(TRIALS):
        for name, grad in _gradients(type_name, trial).items():
            if grad is None:
                continue
            assert torch.isfinite(grad).all(), f"{type_name}.{name}: non-finite gradient at draw {trial}"
            seen_nonzero[name] |= bool(grad.abs().sum() > 0)
    for p in _continuous(spec):
        if p.differentiable:
            assert seen_nonzero[p.name], f"{type_name}.{p.name} is marked differentiable but its gradient is always 0"
        else:
            assert not seen_nonzero[p.name], f"{type_name}.{p.name} is marked non-differentiable but has a gradient"


@pytest.mark.parametrize("graph_name", ["red_bricks", "green_marble", "brushed_steel", "terrazzo_light"])
def test_gradient_reaches_parameters_through_executor_and_renderer(graph_name):
    """Plan.run(grad=True) + render_flash: a loss on the render has finite gradients for the graph's
    differentiable parameters, and most of them are non-zero (one feeding a threshold has none)."""
    graph = load_library_graph(graph_name)
    plan = Plan(graph)
    params = plan.stack()
    leaves = []
    for node in graph.nodes.values():
        for spec in node.spec.params:
            if spec.predicted and spec.differentiable:
                params[node.name][spec.name].requires_grad_(True)
                leaves.append((node.name, spec.name))
    image = render_flash(plan.run(params, res=RES, seed=1, grad=True))
    assert image.requires_grad
    target = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    ((image - target) ** 2).mean().backward()
    nonzero = 0
    for node, name in leaves:
        grad = params[node][name].grad  # None: the parameter only reaches the maps through a step or a hash
        assert grad is None or torch.isfinite(grad).all(), f"{graph_name}: {node}.{name}"
        nonzero += grad is not None and bool(grad.abs().sum() > 0)
    assert nonzero >= max(1, len(leaves) // 2), f"{graph_name}: only {nonzero} of {len(leaves)} gradients non-zero"
    with torch.no_grad():
        torch.testing.assert_close(image.detach(), render_flash(plan.run(plan.stack(), res=RES, seed=1)))


def test_differentiable_defaults_and_refusals():
    assert P("x", "float", 0.5).differentiable
    assert P("c", "color", [0.1, 0.2, 0.3]).differentiable
    assert not P("n", "int", 2, 1, 4).differentiable
    assert not P("e", "enum", "a", choices=("a", "b")).differentiable
    assert not P("x", "float", 0.5, differentiable=False).differentiable
    with pytest.raises(ValueError, match="'n'"):
        P("n", "int", 2, 1, 4, differentiable=True)
