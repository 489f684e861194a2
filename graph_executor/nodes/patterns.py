"""Pattern generators (bricks, tiles, shapes, stripes, gradients). All tile seamlessly.

Patterns are built from per-axis quantities ((B,1,1,W) functions of x, (B,1,H,1) functions of y)
that are combined late, so most full-resolution work is a handful of broadcast operations.
Per-cell random values are looked up with one-hot matrix products (`_expand_cells`), which
handle per-sample cell counts without per-pixel gathers. Repeat counts are integers, and
directions are integer frequency vectors, so every pattern has the image as a period.
"""

from __future__ import annotations

import math

import torch

from graph_executor.nodes._cells import (NEIGHBOURS_2X2, at_cells, cell_grid, cell_random, groups, neighbour,
                                         rect_lattice_hash, stretched_value_noise, take)
from graph_executor.nodes._common import bc, full, hash_unit, into, node_seed, records_grad
from graph_executor.schema import P, node, seed_param

SHAPES = ("disc", "square", "ring", "dome", "gaussian")


def _axis(ctx) -> torch.Tensor:
    """Pixel-centre coordinates in [0,1), (res,)."""
    return (torch.arange(ctx.res, device=ctx.device, dtype=torch.float32) + 0.5) / ctx.res


def _one_hot(index: torch.Tensor, size: int) -> torch.Tensor:
    """(B,N) integer index -> (B,N,size) float one-hot rows."""
    return torch.nn.functional.one_hot(index, size).float()


def _expand_cells(table: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Per-cell values table (B,R,C) looked up at pixel rows (B,H) and columns (B,W) -> (B,1,H,W)."""
    return (_one_hot(row, table.shape[1]) @ table @ _one_hot(col, table.shape[2]).transpose(1, 2)).unsqueeze(1)


def _smooth(t: torch.Tensor) -> torch.Tensor:
    return t * t * (3 - 2 * t)


def _rounded_inside(ex: torch.Tensor, ey: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Inside distance of a box with rounded corners, from the distances to its vertical and horizontal edges."""
    qx = (radius - ex).clamp(min=0)
    qy = (radius - ey).clamp(min=0)
    return radius - torch.sqrt(qx * qx + qy * qy) + (torch.minimum(ex, ey) - radius).clamp(min=0)


def _tile_maps(inside, unit_px, gap, bevel, height_jitter, value):
    """Height, mask and per-tile value ports from an inside distance (in tile units).

    unit_px: tile units per pixel (for a one-pixel anti-aliased edge); gap: mortar width;
    bevel: width of the height ramp as a fraction of the half tile.
    """
    e = inside - bc(gap) * 0.5
    mask = (e / bc(unit_px) + 0.5).clamp(0, 1)
    ramp = torch.maximum(bc(bevel) * 0.5, bc(unit_px))
    height = _smooth((e / ramp).clamp(0, 1)) * (1.0 - bc(height_jitter) * value)
    return {"height": height, "mask": mask, "random": value}


_TILE_OUTPUTS = {"height": "gray", "mask": "gray", "random": "gray"}


def _tile_params(gap=0.08, bevel=0.2):
    return [
        P("gap", "float", gap, 0.0, 0.3, doc="mortar/grout width, as a fraction of the tile's shorter side"),
        P("bevel", "float", bevel, 0.0, 1.0, doc="width of the edge slope, as a fraction of half the shorter side"),
        P("roundness", "float", 0.0, 0.0, 0.5, doc="corner radius, as a fraction of the shorter side"),
        P("height_jitter", "float", 0.3, 0.0, 1.0, doc="random per-tile height variation"),
        seed_param(),
    ]


def _box_tiles(ctx, p, rows, cols, shift_rows):
    """Rectangular tiles on `rows` x `cols` cells; `shift_rows` (B,R) offsets each row (in tiles)."""
    seed = node_seed(ctx, p["seed"])
    t = _axis(ctx)
    rmax, cmax = int(rows.max()), int(cols.max())
    u = t.view(1, 1, -1) * cols.float().view(-1, 1, 1) - shift_rows.unsqueeze(2)  # (B,R,W)
    cell = torch.floor(u)
    fx = u - cell
    col = cell.long() % cols.view(-1, 1, 1)
    table = rect_lattice_hash(rmax, cmax, seed, salt=1)
    value_rows = table.gather(2, col)
    # distances in units of the tile's shorter side, so gap and bevel mean the same for any shape
    short = torch.minimum(1.0 / rows.float(), 1.0 / cols.float())
    ex_rows = torch.minimum(fx, 1 - fx) * (1.0 / (cols.float() * short)).view(-1, 1, 1)
    v = t.view(1, -1) * rows.float().view(-1, 1)
    ry = torch.floor(v)
    fy = (v - ry).view(-1, 1, ctx.res, 1)
    picked = (_one_hot(ry.long(), rmax) @ torch.cat([ex_rows, value_rows], 2)).unsqueeze(1)
    ex, value = picked[..., :ctx.res], picked[..., ctx.res:]
    ey = torch.minimum(fy, 1 - fy) * bc(1.0 / (rows.float() * short))
    inside = _rounded_inside(ex, ey, bc(p["roundness"]))
    unit_px = 1.0 / (ctx.res * short)
    return _tile_maps(inside, unit_px, p["gap"], p["bevel"], p["height_jitter"], value)


@node("bricks", "pattern", outputs=_TILE_OUTPUTS, params=[
    P("rows", "int", 8, 2, 32, doc="brick rows; odd counts are rounded up so the bond tiles"),
    P("columns", "int", 4, 1, 16, doc="bricks per row"),
    P("offset", "float", 0.5, 0.0, 1.0, doc="shift of every other row, in bricks"),
    P("row_jitter", "float", 0.0, 0.0, 1.0, doc="extra random shift per row, in bricks"),
    *_tile_params(),
])
def bricks(ctx, inputs, p):
    """Running-bond bricks: bevelled height, brick mask, and a random value per brick."""
    rows = p["rows"] + p["rows"] % 2
    r = torch.arange(int(rows.max()), device=ctx.device).view(1, -1)
    jitter = hash_unit(r, node_seed(ctx, p["seed"]).view(-1, 1), torch.tensor(3, device=ctx.device))
    shift = p["offset"].view(-1, 1) * (r % 2) + p["row_jitter"].view(-1, 1) * jitter
    return _box_tiles(ctx, p, rows, p["columns"], shift)


@node("square_tiles", "pattern", outputs=_TILE_OUTPUTS, params=[
    P("tiles", "int", 6, 1, 32, doc="tiles per side"),
    *_tile_params(gap=0.06, bevel=0.15),
])
def square_tiles(ctx, inputs, p):
    """A grid of square tiles: bevelled height, tile mask, and a random value per tile."""
    shift = torch.zeros(ctx.batch, int(p["tiles"].max()), device=ctx.device)
    return _box_tiles(ctx, p, p["tiles"], p["tiles"], shift)


@node("hex_tiles", "pattern", outputs=_TILE_OUTPUTS, params=[
    P("columns", "int", 6, 2, 32,
      doc="hexagons per row; rows are the even count that keeps them closest to regular (within 15%)"),
    P("gap", "float", 0.08, 0.0, 0.3, doc="grout width, as a fraction of the hexagon width"),
    P("bevel", "float", 0.3, 0.0, 1.0, doc="width of the edge slope, as a fraction of the inradius"),
    P("height_jitter", "float", 0.3, 0.0, 1.0),
    seed_param(),
])
def hex_tiles(ctx, inputs, p):
    """Hexagonal tiling (pointy-top rows offset by half a cell): height, mask and per-hex value."""
    seed = node_seed(ctx, p["seed"])
    nx = p["columns"]
    ny = 2 * torch.round(nx.float() / math.sqrt(3.0)).clamp(min=1).long()
    s = (nx.float() / ny.float()).view(-1, 1)  # row spacing in column widths
    t = _axis(ctx).view(1, -1)
    U = V = t * nx.float().view(-1, 1)  # x (B,W) and y (B,H) in column widths
    ca, cb = torch.round(U), torch.round(U - 0.5)
    ka, kb = torch.round(V / (2 * s)), torch.round((V - s) / (2 * s))
    dxa, dxb = U - ca, U - 0.5 - cb
    dya, dyb = V - 2 * ka * s, V - (2 * kb + 1) * s
    col_a, col_b = ca.long() % nx.view(-1, 1), cb.long() % nx.view(-1, 1)
    row_a, row_b = (2 * ka.long()) % ny.view(-1, 1), (2 * kb.long() + 1) % ny.view(-1, 1)

    def xs(t):
        return t.view(-1, 1, 1, ctx.res)

    def ys(t):
        return t.view(-1, 1, ctx.res, 1)

    use_a = ((xs(dxa * dxa) + ys(dya * dya)) < (xs(dxb * dxb) + ys(dyb * dyb))).float()
    dx = xs(dxb) + use_a * (xs(dxa) - xs(dxb))
    dy = ys(dyb) + use_a * (ys(dya) - ys(dyb))
    sb = bc(s.view(-1))
    length = torch.sqrt(0.25 + sb * sb)
    along = 0.5 * dx
    across = sb * dy
    inside = torch.minimum(0.5 - dx.abs(), 0.5 * length - torch.maximum((along + across).abs(),
                                                                        (along - across).abs()) / length)
    table = rect_lattice_hash(int(ny.max()), int(nx.max()), seed, salt=2)
    value_a = _expand_cells(table, row_a, col_a)
    value_b = _expand_cells(table, row_b, col_b)
    value = value_a * use_a + value_b * (1.0 - use_a)  # exact selection: one value per hexagon
    # in units of half a hexagon width (the inradius), so gap and bevel read like those of box tiles
    return _tile_maps(inside * 2.0, 2.0 * nx.float() / ctx.res, p["gap"] * 2.0, p["bevel"] * 2.0,
                      p["height_jitter"], value)


def _square_wave(t: torch.Tensor, count: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """+-1 square wave with `count` periods over [0,1), linear edges `edge` wide (image units)."""
    return (torch.sin(2 * math.pi * count * t) / (2 * math.pi * count * edge)).clamp(-1, 1)


@node("checker", "pattern", params=[
    P("scale", "int", 4, 1, 32, doc="checker periods (pairs of squares) per side"),
    P("softness", "float", 0.0, 0.0, 1.0, doc="edge blur, as a fraction of a square"),
])
def checker(ctx, inputs, p):
    """Checkerboard with an even number of squares per side."""
    n = p["scale"].float().view(-1, 1)
    edge = torch.maximum(p["softness"].view(-1, 1) * 0.25 / n, torch.full_like(n, 0.5 / ctx.res))
    wave = _square_wave(_axis(ctx).view(1, -1), n, edge)
    return {"out": 0.5 + 0.5 * wave.view(-1, 1, 1, ctx.res) * wave.view(-1, 1, ctx.res, 1)}


def _direction_params(kx=4, ky=0, kmax=16):
    return [
        P("kx", "int", kx, 0, kmax, doc="repeats along x (with ky: an integer direction, so it tiles)"),
        P("ky", "int", ky, -kmax, kmax, doc="repeats along y"),
    ]


def _phase(ctx, p) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase kx*x + ky*y (B,1,H,W) in cycles and the frequency magnitude (B,1,1,1); (0,0) acts as (1,0)."""
    kx, ky = p["kx"].float(), p["ky"].float()
    kx = kx + ((kx == 0) & (ky == 0)).float()
    t = _axis(ctx)
    phase = (kx.view(-1, 1, 1, 1) * t.view(1, 1, 1, -1)) + (ky.view(-1, 1, 1, 1) * t.view(1, 1, -1, 1))
    return phase, bc(torch.sqrt(kx * kx + ky * ky))


@node("stripes", "pattern", params=[
    *_direction_params(),
    P("width", "float", 0.5, 0.0, 1.0, doc="stripe width as a fraction of the period"),
    P("softness", "float", 0.1, 0.0, 1.0, doc="edge blur, as a fraction of the period"),
])
def stripes(ctx, inputs, p):
    """Parallel stripes along an integer direction (kx, ky)."""
    phase, k = _phase(ctx, p)
    d = (phase - torch.floor(phase) - 0.5).abs()  # 0 on the stripe centre line, in periods
    edge = torch.maximum(bc(p["softness"]) * 0.5, k / ctx.res)
    return {"out": ((bc(p["width"]) * 0.5 - d) / edge + 0.5).clamp(0, 1)}


@node("waves", "pattern", params=[
    *_direction_params(kx=6),
    P("wobble", "float", 0.15, 0.0, 1.0, doc="sideways displacement of the waves, in periods"),
    P("wobble_frequency", "int", 2, 0, 16, doc="displacement waves along the crests"),
    P("sharpness", "float", 1.0, 1.0, 8.0, doc="exponent that narrows the crests"),
])
def waves(ctx, inputs, p):
    """Sine waves along an integer direction, optionally wobbling sideways (ripples, sand, wood)."""
    phase, _ = _phase(ctx, p)
    kx, ky = p["kx"], p["ky"]
    kx = kx + ((kx == 0) & (ky == 0)).long()
    g = torch.gcd(kx, ky).clamp(min=1)
    m = p["wobble_frequency"]
    t = _axis(ctx)
    ax, ay = (-ky * m // g).float(), (kx * m // g).float()
    across = bc(ax) * t.view(1, 1, 1, -1) + bc(ay) * t.view(1, 1, -1, 1)
    wave = 0.5 + 0.5 * torch.cos(2 * math.pi * (phase + bc(p["wobble"]) * torch.sin(2 * math.pi * across)))
    return {"out": wave.pow(bc(p["sharpness"]))}


@node("linear_gradient", "pattern", params=[
    *_direction_params(kx=1, kmax=8),
    P("mode", "enum", "triangle", choices=("triangle", "saw", "cosine"),
      doc="triangle rises then falls (seamless), saw restarts, cosine is smooth"),
    P("phase", "float", 0.0, 0.0, 1.0),
])
def linear_gradient(ctx, inputs, p):
    """Tileable ramp along an integer direction (kx, ky): triangle, saw or cosine profile."""
    phase, _ = _phase(ctx, p)
    f = phase + bc(p["phase"])
    f = f - torch.floor(f)
    mode = bc(p["mode"])
    tri = 1.0 - 2.0 * (f - 0.5).abs()
    cos = 0.5 - 0.5 * torch.cos(2 * math.pi * f)
    return {"out": torch.where(mode == 0, tri, torch.where(mode == 1, f, cos))}


@node("radial_gradient", "pattern", params=[
    P("count", "int", 1, 1, 16, doc="cells per side, each holding one radial gradient"),
    P("radius", "float", 1.0, 0.05, 1.5, doc="radius relative to half a cell"),
    P("falloff", "float", 1.0, 0.2, 5.0, doc="exponent of the profile (<1 flat top, >1 peaked)"),
])
def radial_gradient(ctx, inputs, p):
    """Radial gradient, bright at the centre of each of count x count cells."""
    n = p["count"].float().view(-1, 1)
    u = _axis(ctx).view(1, -1) * n
    d = u - torch.floor(u) - 0.5
    r2 = (d * d).view(-1, 1, 1, ctx.res) + (d * d).view(-1, 1, ctx.res, 1)
    radius = bc(p["radius"]) * 0.5
    return {"out": (1.0 - torch.sqrt(r2) / radius).clamp(0, 1).pow(bc(p["falloff"]))}


@node("uniform_gray", "pattern", params=[P("value", "float", 0.5, 0.0, 1.0)])
def uniform_gray(ctx, inputs, p):
    """A constant gray level."""
    return {"out": full(ctx, p["value"])}


@node("uniform_color", "pattern", outputs={"out": "color"},
      params=[P("color", "color", [0.5, 0.5, 0.5], 0.0, 1.0)])
def uniform_color(ctx, inputs, p):
    """A constant colour."""
    return {"out": full(ctx, p["color"], 3)}


def _shape_profile(shape: int, ox, oy, cos, sin, radius, edge):
    """Coverage (block layout) of one shape centred at offset (ox, oy) with radius and rotation."""
    if shape == 1:
        u = (ox * cos + oy * sin).abs()
        v = (oy * cos - ox * sin).abs()
        return ((radius * math.sqrt(0.5) - torch.maximum(u, v)) / edge).clamp_(0, 1)
    d = torch.sqrt(ox * ox + oy * oy)
    if shape == 0:
        return ((radius - d) / edge).clamp_(0, 1)
    if shape == 2:
        return ((0.2 * radius - (d - 0.75 * radius).abs()) / edge).clamp_(0, 1)
    t = (d / radius).clamp_(max=1.0)
    if shape == 3:
        return torch.sqrt(1.0 - t * t)
    return torch.exp(-6.0 * t * t) * (1.0 - t)


@node("scatter_shapes", "pattern", params=[
    P("count", "int", 8, 1, 32, doc="grid cells per side, one shape per cell at most"),
    P("shape", "enum", "disc", choices=SHAPES),
    P("size", "float", 0.6, 0.05, 1.0, doc="shape diameter, in cells"),
    P("size_jitter", "float", 0.3, 0.0, 1.0),
    P("position_jitter", "float", 0.8, 0.0, 1.0, doc="how far shapes stray from cell centres"),
    P("rotation_jitter", "float", 1.0, 0.0, 1.0, doc="random rotation (squares)"),
    P("density", "float", 1.0, 0.0, 1.0, differentiable=False,
      doc="probability that a cell holds a shape (compared with a hash: no gradient)"),
    P("value_jitter", "float", 0.3, 0.0, 1.0, doc="random per-shape brightness variation"),
    P("softness", "float", 0.1, 0.0, 1.0, doc="edge blur, as a fraction of the radius"),
    seed_param(),
])
def scatter_shapes(ctx, inputs, p):
    """Shapes (disc, square, ring, dome, gaussian spot) scattered on a jittered grid; overlaps take the max."""
    seed = node_seed(ctx, p["seed"])
    out = torch.empty(ctx.batch, 1, ctx.res, ctx.res, device=ctx.device)
    for (count, shape), rows in groups(p["count"].clamp(max=ctx.res // 2), p["shape"]):
        q = take(p, rows)
        grid = cell_grid(ctx.cache, ctx.res, count, ctx.device, half_shift=1)
        r = cell_random(seed[rows], count, 6)

        def per(name):
            return q[name].view(-1, 1, 1)

        theta = math.pi * per("rotation_jitter") * r[..., 3]
        radius = 0.5 * per("size") * (1.0 - per("size_jitter") * r[..., 2])
        strength = (r[..., 5] < per("density")).float() * (1.0 - per("value_jitter") * r[..., 4])
        cells = torch.stack([0.5 + per("position_jitter") * (r[..., 0] - 0.5),
                             0.5 + per("position_jitter") * (r[..., 1] - 0.5),
                             torch.cos(theta), torch.sin(theta), radius, strength], -1)
        pixel = count / ctx.res
        acc = grid.empty(len(rows)).zero_()
        for dx, dy in NEIGHBOURS_2X2:
            c = neighbour(cells, dx, dy)
            ox = at_cells(c[..., 0] + (dx - 0.5)) - grid.fx
            oy = at_cells(c[..., 1] + (dy - 0.5)) - grid.fy
            rad = at_cells(c[..., 4])
            edge = (rad * q["softness"].view(-1, 1, 1, 1, 1)).clamp(min=pixel)
            cover = _shape_profile(shape, ox, oy, at_cells(c[..., 2]), at_cells(c[..., 3]), rad, edge)
            strength = at_cells(c[..., 5])
            cover = cover * strength if records_grad(cover, strength) else cover.mul_(strength)
            acc = into(torch.maximum, acc, cover, out=acc)
        out[rows] = grid.to_pixels(acc)
    return {"out": out}


@node("wood_rings", "pattern", params=[
    P("rings", "int", 12, 2, 48, doc="growth rings across the image"),
    P("distortion", "float", 0.5, 0.0, 1.0, doc="waviness of the rings (displacement up to 0.3 image widths)"),
    P("distortion_scale", "int", 3, 1, 8, doc="noise cells across the grain"),
    P("ring_sharpness", "float", 2.0, 0.5, 8.0, doc="exponent that narrows the dark late-wood band"),
    P("grain", "float", 0.2, 0.0, 1.0, doc="amount of fine streaks along the grain"),
    P("direction", "enum", "horizontal", choices=("horizontal", "vertical"), doc="direction of the grain"),
    seed_param(),
])
def wood_rings(ctx, inputs, p):
    """Side-cut wood: wavy growth rings along the grain plus fine streaks."""
    seed = node_seed(ctx, p["seed"])
    vertical = (p["direction"] == 1)
    t = _axis(ctx)

    def stretched(along, across, salt):
        """Value noise with `along` cells along the grain and `across` across it."""
        return stretched_value_noise(ctx, torch.where(vertical, across, along), torch.where(vertical, along, across),
                                     seed, salt)

    one = torch.ones_like(p["rings"])
    warp = (stretched(2 * one, p["distortion_scale"], 11) + 0.5 * stretched(4 * one, 2 * p["distortion_scale"], 12)
            - 0.75)
    streaks = stretched(2 * one, torch.full_like(one, min(ctx.res // 4, 96)), 13)
    vf = bc(vertical.float())
    across = (1 - vf) * t.view(1, 1, -1, 1) + vf * t.view(1, 1, 1, -1)
    phase = bc(p["rings"].float()) * (across + 0.3 * bc(p["distortion"]) * warp)
    band = (phase - torch.floor(phase)).pow(bc(p["ring_sharpness"]))
    wood = 1.0 - 0.8 * band
    return {"out": (wood * (1.0 - bc(p["grain"]) * 0.6 * streaks)).clamp(0, 1)}


WEAVES = ("plain", "twill", "basket")
# Per weave: rows per over/under cycle, phase offset (rows), and how a thread's index shifts its cycle.
_WEAVE_PERIOD = (2.0, 4.0, 4.0)
_WEAVE_CENTRE = (0.5, 1.0, 1.0)


@node("weave", "pattern", outputs={"height": "gray", "random": "gray"}, params=[
    P("repeats", "int", 4, 1, 16, doc="weave repeats per side (4 threads each way per repeat)"),
    P("pattern", "enum", "plain", choices=WEAVES, doc="plain 1/1, twill 2/2 (diagonal), basket 2x2"),
    P("thread_width", "float", 0.85, 0.3, 1.0, doc="thread width as a fraction of the thread spacing"),
    P("undulation", "float", 0.4, 0.0, 1.0, doc="how much threads dip where they pass under"),
    P("thread_jitter", "float", 0.2, 0.0, 1.0, doc="random per-thread height variation"),
    seed_param(),
])
def weave(ctx, inputs, p):
    """Woven fabric: warp and weft threads passing over and under each other (height, per-thread value)."""
    seed = node_seed(ctx, p["seed"])
    n = (4 * p["repeats"]).float().view(-1, 1)
    kind = p["pattern"]
    period = torch.tensor(_WEAVE_PERIOD, device=ctx.device)[kind].view(-1, 1)
    centre = torch.tensor(_WEAVE_CENTRE, device=ctx.device)[kind].view(-1, 1)
    basket = (kind == 2).view(-1, 1)
    u = _axis(ctx).view(1, -1) * n  # (B,R) in threads; the same for x and y
    index = torch.floor(u)
    d = (u - index - 0.5).abs() / (0.5 * p["thread_width"].view(-1, 1))
    cross = torch.sqrt((1.0 - d * d).clamp(min=0))  # round thread section, 0 between threads
    shift = torch.where(basket, 2 * torch.floor(index / 2), index)
    phase = 2 * math.pi * (u - centre) / period  # (B,R)
    offset = 2 * math.pi * shift / period
    idx = index.long() % n.long()
    values = [hash_unit(idx, seed.view(-1, 1), torch.tensor(salt, device=ctx.device)) for salt in (21, 22)]

    def xs(t):
        return t.view(-1, 1, 1, ctx.res)

    def ys(t):
        return t.view(-1, 1, ctx.res, 1)

    amp = bc(p["undulation"]) * 0.5
    jitter = bc(p["thread_jitter"])
    # warp threads run along y (index from x) and rise where cos(phase(y) - offset(x)) > 0; weft the opposite
    warp = xs(cross) * (1 - amp + amp * torch.cos(ys(phase) - xs(offset))) * (1 - jitter * xs(values[0]))
    weft = ys(cross) * (1 - amp - amp * torch.cos(xs(phase) - ys(offset))) * (1 - jitter * ys(values[1]))
    on_top = (warp >= weft).float()
    random = xs(values[0]) * on_top + ys(values[1]) * (1 - on_top)
    return {"height": torch.maximum(warp, weft), "random": random}
