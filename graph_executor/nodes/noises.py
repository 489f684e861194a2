"""Noise generators. All are hash-based on integer lattices that wrap, so they tile."""

from __future__ import annotations

from graph_executor.nodes._common import fbm, node_seed, perlin
from graph_executor.schema import P, node, seed_param


@node("perlin_fbm", "noise", params=[
    P("scale", "int", 4, 1, 32, doc="cells across the image at the first octave"),
    P("octaves", "int", 5, 1, 8),
    P("persistence", "float", 0.5, 0.1, 0.9, doc="amplitude factor between octaves"),
    P("lacunarity", "float", 2.0, 1.5, 3.0, doc="frequency factor between octaves (periods are rounded)"),
    P("contrast", "float", 1.0, 0.2, 3.0),
    seed_param(),
])
def perlin_fbm(ctx, inputs, p):
    """Fractal Brownian motion of Perlin gradient noise, mapped to [0,1]."""
    n = fbm(ctx, perlin, p["scale"], p["octaves"], p["persistence"], p["lacunarity"], node_seed(ctx, p["seed"]))
    return {"out": (0.5 + 0.5 * n * p["contrast"].view(-1, 1, 1, 1)).clamp(0, 1)}
