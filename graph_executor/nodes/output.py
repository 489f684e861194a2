"""The material output node: gathers the SVBRDF maps of a graph."""

from __future__ import annotations

import torch

from graph_executor.schema import node

_DEFAULTS = {"basecolor": (0.5, 3), "roughness": (0.5, 1), "metallic": (0.0, 1), "height": (0.5, 1)}


@node("output", "output",
      inputs={"basecolor": "color", "normal": "color", "roughness": "gray", "metallic": "gray", "height": "gray"},
      outputs={"basecolor": "color", "normal": "color", "roughness": "gray", "metallic": "gray", "height": "gray"},
      optional=("basecolor", "normal", "roughness", "metallic", "height"))
def output(ctx, inputs, p):
    """Material outputs; unconnected maps take neutral values (flat normal, mid roughness, no metal)."""
    maps = {}
    for port, (value, channels) in _DEFAULTS.items():
        x = inputs[port]
        if x is None:
            x = torch.full((ctx.batch, channels, ctx.res, ctx.res), value, device=ctx.device)
        maps[port] = x.clamp(0, 1)
    n = inputs["normal"]
    if n is None:
        flat = torch.tensor([0.5, 0.5, 1.0], device=ctx.device).view(1, 3, 1, 1)
        n = flat.expand(ctx.batch, 3, ctx.res, ctx.res)
    maps["normal"] = n.clamp(0, 1)
    return maps
