"""Noise generators. All are hash-based on integer lattices that wrap, so they tile."""

from __future__ import annotations

import math

import torch

from graph_executor.nodes._cells import (NEIGHBOURS_3X3, at_cells, cell_grid, cell_random, cellular_features,
                                         cellular_features_pixels, groups, neighbour, stretched_value_noise, take)
from graph_executor.nodes._common import (bc, branch_free, fbm, hash_u32, into, records_grad, node_seed, octave_amplitudes, octave_period,
                                          perlin, value_noise)
from graph_executor.schema import P, node, seed_param

METRICS = ("euclidean", "manhattan", "chebyshev")
CELL_SCALE_MAX = 32  # largest `scale` of worley and voronoi_cells: the pixel-space paths' table size
# Distances (in cells) that map to 1: about the 99.9th percentile of F1 at full jitter per metric.
_METRIC_NORM = (1.0, 1.3, 0.9)


def _fbm_params(scale=4, octaves=5, persistence=0.5):
    return [
        P("scale", "int", scale, 1, 32, doc="cells across the image at the first octave"),
        P("octaves", "int", octaves, 1, 8),
        P("persistence", "float", persistence, 0.1, 0.9, doc="amplitude factor between octaves"),
        P("lacunarity", "float", 2.0, 1.5, 3.0, differentiable=False,
          doc="frequency factor between octaves (periods are rounded, so no gradient)"),
    ]


@node("perlin_fbm", "noise", params=[*_fbm_params(), P("contrast", "float", 1.0, 0.2, 3.0), seed_param()])
def perlin_fbm(ctx, inputs, p):
    """Fractal Brownian motion of Perlin gradient noise, mapped to [0,1]."""
    n = fbm(ctx, perlin, p["scale"], p["octaves"], p["persistence"], p["lacunarity"], node_seed(ctx, p["seed"]),
            gain=0.5 * p["contrast"], bias=0.5)
    return {"out": n.clamp_(0, 1)}


def _octave_spread(persistence: torch.Tensor, octaves: torch.Tensor, sigma: float) -> torch.Tensor:
    """Standard deviation (B,) of a normalised octave sum whose single octave has `sigma`.

    Octaves are independent, so the weighted average has sigma * sqrt(sum a^2) / sum a.
    """
    a = octave_amplitudes(persistence, octaves)
    return sigma * torch.sqrt((a * a).sum(1)) / a.sum(1)


def _standard_fbm(ctx, basis, p, mean: float, sigma: float, gain: torch.Tensor | float,
                  bias: torch.Tensor | float) -> torch.Tensor:
    """gain · z + bias, z the fBm rescaled to zero mean and unit standard deviation (`mean`, `sigma`:
    one octave of the basis). This keeps the output contrast steady whatever the octave count and
    persistence; the affine map is folded into the fBm's own matmul."""
    scale = torch.as_tensor(gain, device=ctx.device) / _octave_spread(p["persistence"], p["octaves"], sigma)
    return fbm(ctx, basis, p["scale"], p["octaves"], p["persistence"], p["lacunarity"], node_seed(ctx, p["seed"]),
               gain=scale, bias=bias - scale * mean)


@node("value_fbm", "noise", params=[*_fbm_params(), P("contrast", "float", 1.0, 0.2, 3.0), seed_param()])
def value_fbm(ctx, inputs, p):
    """Fractal sum of smooth value noise (blobby, less directional than Perlin), mapped to [0,1]."""
    return {"out": _standard_fbm(ctx, value_noise, p, 0.485, 0.231, 0.18 * p["contrast"], 0.5).clamp_(0, 1)}


def _ridge(ctx, period, seed):
    return 1.0 - perlin(ctx, period, seed).abs()


@node("ridged_fbm", "noise", params=[*_fbm_params(), P("sharpness", "float", 2.0, 0.5, 6.0,
                                                       doc="exponent that thins the ridges"), seed_param()])
def ridged_fbm(ctx, inputs, p):
    """Ridged multifractal: octaves of 1-|Perlin|, giving sharp crests (veins, cracks, rock)."""
    z = _standard_fbm(ctx, _ridge, p, 0.76, 0.17, 0.2, 0.6)
    return {"out": z.clamp_(0, 1).pow_(bc(p["sharpness"]))}


@node("clouds", "noise", params=[
    *_fbm_params(scale=3, octaves=6, persistence=0.55),
    P("cover", "float", 0.5, 0.0, 1.0, doc="fraction of the image that is bright"),
    P("softness", "float", 0.7, 0.05, 1.0, doc="width of the transition from clear to covered"),
    seed_param(),
])
def clouds(ctx, inputs, p):
    """Soft multi-octave Perlin clouds thresholded by a cover amount with a soft edge."""
    threshold = torch.special.ndtri(1.0 - p["cover"].clamp(0.001, 0.999))
    width = 6.0 * p["softness"]
    t = _standard_fbm(ctx, perlin, p, 0.0, 0.292, 1.0 / width, 0.5 - threshold / width).clamp_(0, 1)
    return {"out": t * t * (3 - 2 * t)}


@node("anisotropic_noise", "noise", params=[
    P("scale", "int", 2, 1, 16, doc="cells along the grain"),
    P("stretch", "int", 16, 1, 64, doc="how many times denser the noise is across the grain"),
    P("octaves", "int", 3, 1, 6),
    P("persistence", "float", 0.5, 0.1, 0.9),
    P("direction", "enum", "horizontal", choices=("horizontal", "vertical"), doc="direction of the grain"),
    P("contrast", "float", 1.0, 0.2, 3.0),
    seed_param(),
])
def anisotropic_noise(ctx, inputs, p):
    """Value noise stretched along one axis: streaks for brushed metal, wood grain and fibres."""
    seed = node_seed(ctx, p["seed"])
    vertical = p["direction"] == 1
    amps = octave_amplitudes(p["persistence"], p["octaves"])
    weights = amps / amps.sum(1, keepdim=True)
    two = torch.full_like(p["persistence"], 2.0)
    total = torch.zeros(ctx.batch, 1, ctx.res, ctx.res, device=ctx.device)
    for o in range(weights.shape[1]):
        along = octave_period(p["scale"], two, o, ctx.res)
        across = octave_period(p["scale"] * p["stretch"], two, o, ctx.res)
        octave_seed = hash_u32(seed, torch.full_like(seed, o))
        layer = stretched_value_noise(ctx, torch.where(vertical, across, along), torch.where(vertical, along, across),
                                      octave_seed)
        total.add_(layer.mul_(bc(weights[:, o])))
    z = (total - 0.485) / bc(_octave_spread(p["persistence"], p["octaves"], 0.231))
    return {"out": (0.5 + 0.18 * z * bc(p["contrast"])).clamp(0, 1)}


def _jittered_points(seed, period, jitter):
    table = cell_random(seed, period, 3)
    j = jitter.view(-1, 1, 1)
    return 0.5 + j * (table[..., 0] - 0.5), 0.5 + j * (table[..., 1] - 0.5), table[..., 2]


@node("worley", "noise", outputs={"f1": "gray", "f2_f1": "gray"}, params=[
    P("scale", "int", 6, 1, CELL_SCALE_MAX, doc="cells across the image"),
    P("jitter", "float", 1.0, 0.0, 1.0, doc="how far feature points stray from cell centres"),
    P("metric", "enum", "euclidean", choices=METRICS),
    seed_param(),
])
def worley(ctx, inputs, p):
    """Cellular (Worley) noise: distance to the nearest feature point (f1) and F2-F1 (cell borders)."""
    seed = node_seed(ctx, p["seed"])
    if branch_free(ctx):  # one pass over the whole batch, whatever each sample's scale and metric
        scale = p["scale"].clamp(max=ctx.res // 2)
        px, py, _ = _jittered_points(seed, min(CELL_SCALE_MAX, ctx.res // 2), p["jitter"])
        f1, f2, _ = cellular_features_pixels(torch.stack([px, py], -1), scale, p["metric"], ctx.res)
        k = bc(torch.tensor([1.0 / n for n in _METRIC_NORM], device=ctx.device)[p["metric"]])
        return {"f1": (f1 * k).clamp(0, 1), "f2_f1": ((f2 - f1) * k).clamp(0, 1)}
    f1_out = torch.empty(ctx.batch, 1, ctx.res, ctx.res, device=ctx.device)
    edge_out = torch.empty_like(f1_out)
    for (scale, metric), rows in groups(p["scale"].clamp(max=ctx.res // 2), p["metric"]):
        grid = cell_grid(ctx.cache, ctx.res, scale, ctx.device)
        px, py, _ = _jittered_points(seed[rows], scale, p["jitter"][rows])
        f1, f2, _ = cellular_features(grid, px, py, metric)
        k = 1.0 / _METRIC_NORM[metric]
        if records_grad(f1):  # out of place: f1 and f2 are saved for their square roots' backward
            f2, f1 = (f2 - f1) * k, f1 * k
        else:
            f2, f1 = f2.sub_(f1).mul_(k), f1.mul_(k)
        edge_out[rows] = grid.to_pixels(f2.clamp_(0, 1))
        f1_out[rows] = grid.to_pixels(f1.clamp_(0, 1))
    return {"f1": f1_out, "f2_f1": edge_out}


@node("voronoi_cells", "noise", outputs={"out": "gray", "edges": "gray"}, params=[
    P("scale", "int", 6, 2, CELL_SCALE_MAX, doc="cells across the image"),
    P("jitter", "float", 1.0, 0.0, 1.0),
    P("edge_width", "float", 0.1, 0.01, 0.5, doc="width of the edge falloff, in cells"),
    seed_param(),
])
def voronoi_cells(ctx, inputs, p):
    """Voronoi cells with a random value per cell (out) and bright cell borders (edges)."""
    seed = node_seed(ctx, p["seed"])
    if branch_free(ctx):
        px, py, values = _jittered_points(seed, min(CELL_SCALE_MAX, ctx.res // 2), p["jitter"])
        f1, f2, nearest = cellular_features_pixels(torch.stack([px, py], -1), p["scale"].clamp(max=ctx.res // 2),
                                                   None, ctx.res, values)
        edges = (f2 - f1).div_(bc(p["edge_width"])).clamp_(max=1.0).neg_().add_(1.0)
        return {"out": nearest, "edges": edges}
    value_out = torch.empty(ctx.batch, 1, ctx.res, ctx.res, device=ctx.device)
    edge_out = torch.empty_like(value_out)
    for (scale,), rows in groups(p["scale"].clamp(max=ctx.res // 2)):
        grid = cell_grid(ctx.cache, ctx.res, scale, ctx.device)
        px, py, values = _jittered_points(seed[rows], scale, p["jitter"][rows])
        f1, f2, nearest = cellular_features(grid, px, py, 0, values)
        value_out[rows] = grid.to_pixels(nearest)
        width = p["edge_width"][rows].view(-1, 1, 1, 1, 1)
        if records_grad(f1, width):  # out of place: f1 and f2 are saved for their square roots' backward
            edge = 1.0 - ((f2 - f1) / width).clamp(max=1.0)
        else:
            edge = f2.sub_(f1).div_(width).clamp_(max=1.0).neg_().add_(1.0)
        edge_out[rows] = grid.to_pixels(edge)
    return {"out": value_out, "edges": edge_out}


@node("white_noise", "noise", params=[
    P("scale", "int", 256, 1, 512, doc="cells across the image (capped at the resolution)"),
    seed_param(),
])
def white_noise(ctx, inputs, p):
    """Independent uniform random value per cell (per pixel at full scale)."""
    seed = node_seed(ctx, p["seed"])
    out = torch.empty(ctx.batch, 1, ctx.res, ctx.res, device=ctx.device)
    for (scale,), rows in groups(p["scale"].clamp(max=ctx.res)):
        grid = cell_grid(ctx.cache, ctx.res, scale, ctx.device)
        w = grid.width
        cells = at_cells(cell_random(seed[rows], scale, 1)[..., 0])
        out[rows] = grid.to_pixels(cells.expand(-1, scale, w, scale, w))
    return {"out": out}


@node("scratches", "noise", params=[
    P("count", "int", 6, 1, 24, doc="cells per side; each cell may hold one scratch"),
    P("density", "float", 0.7, 0.0, 1.0, differentiable=False,
      doc="probability that a cell holds a scratch (compared with a hash: no gradient)"),
    P("length", "float", 0.7, 0.1, 1.0, doc="maximum half-length, in cells"),
    P("width", "float", 0.004, 0.001, 0.02, doc="line half-width, in image widths"),
    P("angle", "float", 0.0, 0.0, 1.0, doc="main direction, as a fraction of a half turn"),
    P("angle_jitter", "float", 0.3, 0.0, 1.0, doc="random spread of directions (1: any direction)"),
    P("intensity_jitter", "float", 0.5, 0.0, 1.0),
    seed_param(),
])
def scratches(ctx, inputs, p):
    """Thin straight line segments scattered on a jittered grid (metal scratches, hairs)."""
    seed = node_seed(ctx, p["seed"])
    out = torch.empty(ctx.batch, 1, ctx.res, ctx.res, device=ctx.device)
    for (count,), rows in groups(p["count"]):
        q = take(p, rows)
        grid = cell_grid(ctx.cache, ctx.res, count, ctx.device)
        r = cell_random(seed[rows], count, 6)
        theta = math.pi * (q["angle"].view(-1, 1, 1) + q["angle_jitter"].view(-1, 1, 1) * (r[..., 2] - 0.5))
        half = q["length"].view(-1, 1, 1) * (0.4 + 0.6 * r[..., 3])
        present = (r[..., 5] < q["density"].view(-1, 1, 1)).float()
        strength = present * (1.0 - q["intensity_jitter"].view(-1, 1, 1) * r[..., 4])
        inv_width = 1.0 / (q["width"].view(-1, 1, 1, 1, 1) * count)
        cells = torch.stack([r[..., 0], r[..., 1], torch.cos(theta), torch.sin(theta), half, strength], -1)
        acc = grid.empty(len(rows)).zero_()
        along, perp = grid.empty(len(rows)), grid.empty(len(rows))
        for dx, dy in NEIGHBOURS_3X3:
            c = neighbour(cells, dx, dy)
            ox = at_cells(c[..., 0] + dx) - grid.fx
            oy = at_cells(c[..., 1] + dy) - grid.fy
            cos, sin = at_cells(c[..., 2]), at_cells(c[..., 3])
            along = into(torch.add, ox * cos, oy * sin, out=along)
            perp = into(torch.sub, ox * sin, oy * cos, out=perp)
            if records_grad(along, perp):  # the same values without in-place steps autograd cannot undo
                along = (along.abs() - at_cells(c[..., 4])).clamp(min=0)
                perp = ((perp * perp + along * along).sqrt() * inv_width)
                perp = (1.0 - perp).clamp(min=0) * at_cells(c[..., 5])
            else:
                along.abs_().sub_(at_cells(c[..., 4])).clamp_(min=0)
                perp.mul_(perp).addcmul_(along, along).sqrt_().mul_(inv_width)
                perp.neg_().add_(1.0).clamp_(min=0).mul_(at_cells(c[..., 5]))
            acc = into(torch.maximum, acc, perp, out=acc)
        out[rows] = grid.to_pixels(acc)
    return {"out": out}
