"""Run one node type directly on tileable test inputs, for tests that cover every registered type."""

from __future__ import annotations

import random

import torch

from graph_executor.executor import NodeContext, _value_tensor
from graph_executor.nodes._common import fbm, perlin
from graph_executor.schema import PortKind
from graph_executor.registry import load_node_library


def node_types() -> list[str]:
    return sorted(t for t in load_node_library() if t != "output")


def tileable_input(batch: int, channels: int, res: int, salt: int) -> torch.Tensor:
    """Smooth, seamlessly tiling test images in [0,1], distinct per channel and sample."""
    ctx = NodeContext(res, batch * channels, torch.device("cpu"),
                      torch.arange(batch * channels, dtype=torch.long) + 100 * salt, {})
    n = fbm(ctx, perlin, torch.full((batch * channels,), 3), torch.full((batch * channels,), 4),
            torch.full((batch * channels,), 0.5), torch.full((batch * channels,), 2.0), ctx.seed)
    return (0.5 + 0.5 * n).clamp(0, 1).view(batch, channels, res, res)


def random_params(type: str, batch: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    spec = load_node_library()[type]
    return [{p.name: p.random_value(rng) for p in spec.params} for _ in range(batch)]


def run_node(type: str, params: list[dict], seeds: list[int], res: int = 64,
             inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    spec = load_node_library()[type]
    batch = len(params)
    if inputs is None:
        inputs = {port: tileable_input(batch, 3 if kind is PortKind.COLOR else 1, res, i)
                  for i, (port, kind) in enumerate(spec.inputs.items())}
    tensors = {p.name: _value_tensor(p, [ps[p.name] for ps in params], "cpu") for p in spec.params}
    ctx = NodeContext(res, batch, torch.device("cpu"), torch.tensor(seeds, dtype=torch.long), {})
    with torch.no_grad():
        return spec.fn(ctx, dict(inputs), tensors)


def seam_ratio(x: torch.Tensor) -> float:
    """Wrap-around seam difference relative to the largest interior row/column difference."""
    cols = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2))
    rows = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    seam_c = (x[..., 0] - x[..., -1]).abs().mean()
    seam_r = (x[..., 0, :] - x[..., -1, :]).abs().mean()
    return max(float(seam_c / (cols.max() + 1e-4)), float(seam_r / (rows.max() + 1e-4)))
