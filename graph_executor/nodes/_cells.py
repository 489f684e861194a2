"""Cell-lattice machinery for cellular, scatter and per-cell-random nodes.

A square lattice of P cells per side is evaluated in *block layout*: the image is viewed as
(P, w, P, w) = (cell row, pixel row inside the cell, cell column, pixel column inside the
cell). Per-cell quantities then have shape (b,P,1,P,1) and in-cell fractions (1,1,1,P,w) or
(1,P,w,1,1), so a cellular feature is a few broadcast operations per neighbour instead of
per-pixel gathers, and the x and y halves of a distance stay separable until they are added.
Cells wrap modulo P, so everything built on a grid tiles. Samples of a batch are grouped by
their integer parameters (`groups`), because the layout depends on P.
"""

from __future__ import annotations

from typing import Iterator

import torch

from graph_executor.nodes._common import hash_unit, interpolation_matrices, into

NEIGHBOURS_3X3 = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
NEIGHBOURS_2X2 = ((0, 0), (1, 0), (0, 1), (1, 1))


class CellGrid:
    """Block layout of P cells per side over a res x res image.

    `half_shift=1` moves the lattice by half a cell, so each block straddles the corners of
    four original cells: a shape no larger than a cell then only needs that 2x2 neighbourhood.
    """

    def __init__(self, res: int, period: int, device: torch.device, half_shift: int = 0):
        P, hs = int(period), int(half_shift)
        self.res, self.period = res, P
        c = torch.arange(P + 1, dtype=torch.long)
        # first pixel j of cell c: smallest j with (j + 0.5) * P / res - hs / 2 >= c (integer form)
        start = -torch.div(-((2 * c + hs) * res - P), 2 * P, rounding_mode="floor")
        self.width = w = int((start[1:] - start[:-1]).max())
        j_virtual = start[:P].view(P, 1) + torch.arange(w).view(1, w)
        u = ((2 * j_virtual + 1) * P - hs * res).double() / (2 * res) - c[:P].view(P, 1).double()
        frac = u.float().to(device)
        self.fx = frac.view(1, 1, 1, P, w)
        self.fy = frac.view(1, P, w, 1, 1)
        j = torch.arange(res)
        raw = torch.div((2 * j + 1) * P - hs * res, 2 * res, rounding_mode="floor")
        cell = raw % P
        px = j + res * torch.div(cell - raw, P, rounding_mode="floor") - start[cell]
        line = cell * w + px
        if hs == 0 and res % P == 0:
            self.index = None
        else:
            self.index = (line.view(-1, 1) * (P * w) + line.view(1, -1)).reshape(-1).to(device)

    def to_pixels(self, blk: torch.Tensor) -> torch.Tensor:
        """(b,P,w,P,w) block-layout values -> (b,1,res,res) image."""
        b = blk.shape[0]
        if self.index is None:
            return blk.reshape(b, 1, self.res, self.res)
        flat = blk.reshape(b, -1).index_select(1, self.index)
        return flat.view(b, 1, self.res, self.res)

    def empty(self, b: int) -> torch.Tensor:
        P, w = self.period, self.width
        return torch.empty(b, P, w, P, w, device=self.fx.device)


@torch.compiler.disable  # per-run cache: kept out of compiled graphs so guards never see it
def cell_grid(cache: dict, res: int, period: int, device, half_shift: int = 0) -> CellGrid:
    key = ("cellgrid", res, int(period), device, half_shift)
    if key not in cache:
        cache[key] = CellGrid(res, period, device, half_shift)
    return cache[key]


def cell_random(seed: torch.Tensor, period: int, channels: int, salt: int = 0) -> torch.Tensor:
    """Uniform [0,1) values per cell and channel, (b,P,P,C); depends only on (cell, seed, salt)."""
    i = torch.arange(period, device=seed.device)
    ch = torch.arange(channels, device=seed.device) + salt * 1009
    # the column key comes last, so only the final hash rounds run at full (b,P,P,C) size
    return hash_unit(seed.view(-1, 1, 1, 1), ch.view(1, 1, 1, -1), i.view(1, -1, 1, 1), i.view(1, 1, -1, 1))


def neighbour(table: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Values of the cell (dx, dy) away, for every cell of a (b,P,P,...) table (wraps)."""
    if dx == 0 and dy == 0:
        return table
    return torch.roll(table, shifts=(-dy, -dx), dims=(1, 2))


def at_cells(t: torch.Tensor) -> torch.Tensor:
    """(b,P,P) per-cell values -> (b,P,1,P,1) for broadcasting in block layout."""
    return t.reshape(t.shape[0], t.shape[1], 1, t.shape[2], 1)


def groups(*keys: torch.Tensor) -> Iterator[tuple[tuple[int, ...], torch.Tensor]]:
    """Distinct combinations of per-sample integer keys, with the batch rows that have each."""
    stacked = torch.stack([k.long().reshape(-1) for k in keys], 1)
    uniq, inverse = torch.unique(stacked, dim=0, return_inverse=True)
    for i, key in enumerate(uniq.tolist()):
        yield tuple(key), (inverse == i).nonzero().squeeze(1)


def take(p: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The parameters of a subset of the batch."""
    return {k: v.index_select(0, rows) for k, v in p.items()}


def cellular_features(grid: CellGrid, px: torch.Tensor, py: torch.Tensor, metric: int,
                      values: torch.Tensor | None = None):
    """F1 and F2 distances (cell units) to jittered feature points, plus the nearest cell's value.

    px, py: (b,P,P) point positions inside their cells; metric 0 euclidean, 1 manhattan,
    2 chebyshev; values: optional (b,P,P) per-cell values to report for the nearest cell.
    Only the 3x3 neighbourhood is searched. Returns block-layout tensors (f1, f2, nearest_value).
    """
    b = px.shape[0]
    f1 = grid.empty(b).fill_(float("inf"))
    f2 = f1.clone()
    score = grid.empty(b)
    tmp = grid.empty(b)
    val = near = far = None
    if values is not None:
        val = grid.empty(b).zero_()
        near, far = grid.empty(b), grid.empty(b)
    for dx, dy in NEIGHBOURS_3X3:
        ox = at_cells(neighbour(px, dx, dy) + dx) - grid.fx
        oy = at_cells(neighbour(py, dx, dy) + dy) - grid.fy
        if metric == 0:
            score = into(torch.add, ox * ox, oy * oy, out=score)
        elif metric == 1:
            score = into(torch.add, ox.abs_(), oy.abs_(), out=score)
        else:
            score = into(torch.maximum, ox.abs_(), oy.abs_(), out=score)
        if val is not None:  # val*1 + v*0 and val*0 + v*1 are exact, so each cell keeps one value
            torch.lt(score.detach(), f1.detach(), out=near)
            torch.ge(score.detach(), f1.detach(), out=far)
            val.mul_(far).addcmul_(at_cells(neighbour(values, dx, dy)), near)
        tmp = into(torch.maximum, f1, score, out=tmp)
        f2 = into(torch.minimum, f2, tmp, out=f2)
        f1 = into(torch.minimum, f1, score, out=f1)
    if metric == 0:
        f1 = f1.sqrt_() if not f1.requires_grad else f1.sqrt()
        f2 = f2.sqrt_() if not f2.requires_grad else f2.sqrt()
    return f1, f2, val


def pixel_cells(res: int, period: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cell index and in-cell fraction of every pixel row (= column), each (B, res).

    The pixel-space twin of `CellGrid` for per-sample periods: (j + 0.5)·P / res is exact in
    float32 for power-of-two resolutions, so the fractions equal the grid's bit for bit.
    """
    u = (torch.arange(res, device=period.device, dtype=torch.float32) + 0.5).view(1, -1) \
        * period.view(-1, 1).float() / res
    cell = torch.floor(u)
    return cell.long(), u - cell


def cellular_features_pixels(table: torch.Tensor, period: torch.Tensor, metric: torch.Tensor | None,
                             res: int, values: torch.Tensor | None = None):
    """`cellular_features` in pixel space for a batch whose samples have different periods and metrics.

    table: (B, Pmax, Pmax, 2) feature-point positions inside their cells (x, y), rows then columns,
    Pmax at least every sample's period; period: (B,) long; metric: (B,) long or None (euclidean);
    values: optional (B, Pmax, Pmax) per-cell values. Each pixel reads its 3x3 neighbour cells from
    the table with wrapped indices, so no sample needs the batch grouped by period, and the
    arithmetic is `cellular_features`' own, in the same order: the results are equal. Returns
    (f1, f2, nearest value), each (B, 1, res, res).
    """
    B, pmax = table.shape[0], table.shape[1]
    cell, frac = pixel_cells(res, period)
    P = period.view(-1, 1)
    fy, fx = frac.view(B, 1, res, 1), frac.view(B, 1, 1, res)
    flat = table.reshape(B, pmax * pmax, 2)
    vflat = None if values is None else values.reshape(B, pmax * pmax)
    m = None if metric is None else metric.view(-1, 1, 1, 1)
    f1 = f2 = val = None
    for dx, dy in NEIGHBOURS_3X3:
        rows = ((cell + dy) % P) * pmax
        index = (rows.view(B, 1, res, 1) + ((cell + dx) % P).view(B, 1, 1, res)).view(B, -1)
        ox = (flat[..., 0].gather(1, index).view(B, 1, res, res) + dx) - fx
        oy = (flat[..., 1].gather(1, index).view(B, 1, res, res) + dy) - fy
        score = ox * ox + oy * oy
        if m is not None:
            ax, ay = ox.abs(), oy.abs()
            score = torch.where(m == 0, score, torch.where(m == 1, ax + ay, torch.maximum(ax, ay)))
        if f1 is None:
            f1, f2 = score, torch.full_like(score, float("inf"))
            if vflat is not None:
                val = vflat.gather(1, index).view(B, 1, res, res)
            continue
        if vflat is not None:  # val*1 + v*0 and val*0 + v*1 are exact, as in cellular_features
            near = (score < f1).to(score.dtype)
            val = val * (score >= f1).to(score.dtype) + vflat.gather(1, index).view(B, 1, res, res) * near
        f2 = torch.minimum(f2, torch.maximum(f1, score))
        f1 = torch.minimum(f1, score)
    if m is None:
        return f1.sqrt(), f2.sqrt(), val
    return torch.where(m == 0, f1.sqrt(), f1), torch.where(m == 0, f2.sqrt(), f2), val


def rect_lattice_hash(rows: int, cols: int, seed: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """Uniform [0,1) values on a (b, rows, cols) lattice, indexed [row, column]."""
    r = torch.arange(rows, device=seed.device)
    c = torch.arange(cols, device=seed.device)
    return hash_unit(seed.view(-1, 1, 1), torch.tensor(salt + 7919, device=seed.device), r.view(1, -1, 1),
                     c.view(1, 1, -1))


def stretched_value_noise(ctx, cols: torch.Tensor, rows: torch.Tensor, seed: torch.Tensor, salt: int = 0):
    """Smooth tileable value noise with per-sample integer periods along x (cols) and y (rows); (B,1,H,W)."""
    wx = interpolation_matrices(ctx, cols)[0]
    wy = interpolation_matrices(ctx, rows)[0]
    table = rect_lattice_hash(wy.shape[2], wx.shape[2], seed, salt)
    return (wy @ table @ wx.transpose(1, 2)).unsqueeze(1)
