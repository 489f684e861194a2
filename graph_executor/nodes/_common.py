"""Batched, tileable building blocks shared by node implementations.

Every random quantity comes from an integer hash of (lattice coordinates, per-sample seed), so a
sample's output depends only on its own parameters and seed, never on its position in the batch,
and lattice coordinates wrap modulo an integer period, so every noise tiles.
"""

from __future__ import annotations

import math

import torch

from graph_executor.ops import normalize_channels  # noqa: F401  (re-exported for the nodes)
from graph_executor.schema import NodeContext

M32 = 0xFFFFFFFF
FORCE_BRANCH_FREE = False  # tests: take the branch-free node paths on a CPU too


def branch_free(ctx: NodeContext) -> bool:
    """Whether node functions take their branch-free paths: on a GPU and under torch.compile.

    Eager CPU code may read a parameter on the host to skip work (`levels` with gamma 1, the
    anti-alias blur of an untiled `transform_2d`) or split the batch into groups of equal integer
    parameters (`worley`, blend modes); that is free on a CPU. On a GPU each such read waits for
    all queued kernels, and under torch.compile it breaks the graph, while the skipped work costs
    little once fused. The branch-free paths compute the same values (tests compare them on CPU,
    with `FORCE_BRANCH_FREE`, to 1e-5).
    """
    return FORCE_BRANCH_FREE or ctx.device.type != "cpu" or torch.compiler.is_compiling()


def records_grad(*tensors) -> bool:
    """True when autograd is recording through any of `tensors` (refinement runs the executor with
    grad=True): then kernels with `out=` buffers, which have no derivative, must not be used."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def into(fn, *args, out: torch.Tensor) -> torch.Tensor:
    """`fn(*args, out=out)`, reusing the buffer, unless autograd records through `args`: then
    `fn(*args)` into a new tensor (the same values). Callers use the returned tensor."""
    if records_grad(*args):
        return fn(*args)
    return fn(*args, out=out)


def bc(p: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample parameter (B,) or (B,K) to (B,1|K,1,1)."""
    if p.dim() == 1:
        return p.view(-1, 1, 1, 1)
    return p.view(p.shape[0], p.shape[1], 1, 1)


def node_seed(ctx: NodeContext, seed_param: torch.Tensor) -> torch.Tensor:
    """(B,) int64 seed mixing the run seed, the node's identity and its `seed` parameter."""
    return hash_u32(ctx.seed, seed_param.long())


def hash_u32(*keys: torch.Tensor) -> torch.Tensor:
    """Integer hash of broadcastable int64 tensors into [0, 2^32); 31-bit constants keep it exact."""
    h = torch.zeros((), dtype=torch.long, device=keys[0].device) + 0x2545F491
    for k in keys:
        h = ((h ^ (k & M32)) * 0x27D4EB2F) & M32
        h = h ^ (h >> 15)
    h = (h * 0x165667B1) & M32
    return h ^ (h >> 13)


def hash_unit(*keys: torch.Tensor) -> torch.Tensor:
    """Hash to floats uniform in [0,1)."""
    return hash_u32(*keys).to(torch.float32) * (1.0 / 4294967296.0)


def lattice(ctx: NodeContext, period: torch.Tensor):
    """Integer cell coordinates and fractions for a per-sample integer period.

    Returns (ix0, iy0, ix1, iy1, fx, fy): cells (B,1,H,W) int64 wrapped modulo the period, and
    the fractional position inside the cell.
    """
    x, y = ctx.coords()
    p = bc(period.clamp(min=1)).float()
    u, v = x * p, y * p
    fu, fv = torch.floor(u), torch.floor(v)
    pl = bc(period.clamp(min=1))
    ix0, iy0 = fu.long() % pl, fv.long() % pl
    return ix0, iy0, (ix0 + 1) % pl, (iy0 + 1) % pl, u - fu, v - fv


def fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


@torch.compiler.disable  # per-run cache: kept out of compiled graphs so guards never see it
def interpolation_matrices(ctx: NodeContext, period: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice interpolation matrices (B, res, Pmax) for per-sample integer periods.

    `weights[b, x, i]` is the faded weight of lattice column i at pixel x, and `offsets` the same
    weight times the pixel's offset from that lattice point. Lattice noises are separable bilinear
    forms over these matrices, so a whole octave is two small batched matmuls instead of dozens
    of full-resolution elementwise passes. Columns wrap modulo the period, so the result tiles.
    """
    values = tuple(period.tolist())  # the one host read per octave (on a GPU, a sync): key and size
    key = ("lattice", ctx.res, ctx.device, values)
    if key in ctx.cache:
        return ctx.cache[key]
    period = period.clamp(min=1)
    pmax = max((1, *values))
    x = (torch.arange(ctx.res, device=ctx.device, dtype=torch.float32) + 0.5) / ctx.res
    u = x.view(1, -1) * period.view(-1, 1).float()
    cell = torch.floor(u)
    f = u - cell
    i0 = cell.long() % period.view(-1, 1)
    i1 = (i0 + 1) % period.view(-1, 1)
    w1 = fade(f)
    w0 = 1 - w1
    weights = torch.zeros(period.shape[0], ctx.res, pmax, device=ctx.device)
    offsets = torch.zeros_like(weights)
    weights.scatter_add_(2, i0.unsqueeze(2), w0.unsqueeze(2))
    weights.scatter_add_(2, i1.unsqueeze(2), w1.unsqueeze(2))
    offsets.scatter_add_(2, i0.unsqueeze(2), (w0 * f).unsqueeze(2))
    offsets.scatter_add_(2, i1.unsqueeze(2), (w1 * (f - 1)).unsqueeze(2))
    ctx.cache[key] = (weights, offsets)
    return weights, offsets


def lattice_hash(ctx: NodeContext, period: torch.Tensor, seed: torch.Tensor, salt: int = 0,
                 pmax: int | None = None) -> torch.Tensor:
    """Uniform [0,1) values on each sample's (Pmax, Pmax) lattice, indexed [row, column]; pass `pmax`
    (the largest period, at least 1) when it is known, to spare a host read."""
    if pmax is None:
        pmax = int(period.clamp(min=1).max().item())
    i = torch.arange(pmax, device=ctx.device)
    return hash_unit(i.view(1, 1, -1), i.view(1, -1, 1), seed.view(-1, 1, 1), torch.tensor(salt, device=ctx.device))


@torch.compiler.disable  # per-run cache: kept out of compiled graphs so guards never see it
def lattice_taps(ctx: NodeContext, period: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The two lattice columns each pixel interpolates between, with faded weights and offsets.

    Returns (i0, i1, w0, w1, o0, o1), each (B, res): columns wrap modulo the per-sample period;
    w are the faded weights and o the weights times the pixel's offset from each lattice point.
    """
    key = ("taps", ctx.res, ctx.device, tuple(period.tolist()))
    if key not in ctx.cache:
        period = period.clamp(min=1).view(-1, 1)
        x = (torch.arange(ctx.res, device=ctx.device, dtype=torch.float32) + 0.5) / ctx.res
        u = x.view(1, -1) * period.float()
        cell = torch.floor(u)
        f = u - cell
        i0 = cell.long() % period
        w1 = fade(f)
        w0 = 1 - w1
        ctx.cache[key] = (i0, (i0 + 1) % period, w0, w1, w0 * f, w1 * (f - 1))
    return ctx.cache[key]


def _separable_sparse(table: torch.Tensor, rows: tuple, cols: tuple) -> torch.Tensor:
    """rows-matrix @ table @ cols-matrixᵀ where both matrices have two taps (index, coefficient) per row."""
    (r0, r1, rc0, rc1), (c0, c1, cc0, cc1) = rows, cols
    B, P, _ = table.shape
    res = c0.shape[1]
    u = (table.gather(2, c0.unsqueeze(1).expand(B, P, res)) * cc0.unsqueeze(1)
         + table.gather(2, c1.unsqueeze(1).expand(B, P, res)) * cc1.unsqueeze(1))
    return (u.gather(1, r0.unsqueeze(2).expand(B, res, res)) * rc0.unsqueeze(2)
            + u.gather(1, r1.unsqueeze(2).expand(B, res, res)) * rc1.unsqueeze(2))


def _dense_is_faster(ctx: NodeContext, period: torch.Tensor) -> bool:
    """Dense interpolation matrices cost 2·P multiply-adds per pixel, the two-tap gathers a dozen
    full-resolution passes: on CPU dense wins up to P = res/4 (measured at 256²), on a GPU, with
    ~20 FLOPs per byte of memory traffic, up to P = 256 whatever the resolution.

    Periods here are octave periods, at most res/2 (`octave_period`), so on a GPU up to 512² the
    answer is known without reading them (which would wait for the GPU)."""
    if ctx.device.type == "cuda":
        return ctx.res // 2 <= 256 or int(period.max()) <= 256
    return int(period.max()) <= ctx.res // 4


def perlin_factors(ctx: NodeContext, period: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R), each (B, res, 2·Pmax), with Perlin noise = L @ Rᵀ (rows y, columns x).

    Gradient noise is the sum of two separable bilinear forms, W·gx·Oᵀ + O·gy·Wᵀ, which is one
    product of the concatenated factors.
    """
    weights, offsets = interpolation_matrices(ctx, period)
    angle = lattice_hash(ctx, period, seed, pmax=weights.shape[2]) * (2 * math.pi)
    left = torch.cat([weights @ torch.cos(angle), offsets @ torch.sin(angle)], 2) * math.sqrt(2.0)
    return left, torch.cat([offsets, weights], 2)


def value_factors(ctx: NodeContext, period: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R), each (B, res, Pmax), with value noise = L @ Rᵀ."""
    weights, _ = interpolation_matrices(ctx, period)
    return weights @ lattice_hash(ctx, period, seed, pmax=weights.shape[2]), weights


def perlin(ctx: NodeContext, period: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Tileable gradient noise with `period` cells across the image, roughly in [-1,1]; (B,1,H,W).

    Small periods are one batched matmul of the interpolation factors; above the dense limit the
    matmul cost grows with P and a two-tap gather per axis wins (the matrices are 2-sparse).
    """
    if _dense_is_faster(ctx, period):
        left, right = perlin_factors(ctx, period, seed)
        return (left @ right.transpose(1, 2)).unsqueeze(1)
    angle = lattice_hash(ctx, period, seed) * (2 * math.pi)
    i0, i1, w0, w1, o0, o1 = lattice_taps(ctx, period)
    weight, offset = (i0, i1, w0, w1), (i0, i1, o0, o1)
    n = _separable_sparse(torch.cos(angle), weight, offset) + _separable_sparse(torch.sin(angle), offset, weight)
    return (n * math.sqrt(2.0)).unsqueeze(1)


def value_noise(ctx: NodeContext, period: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Tileable smooth value noise in [0,1]; (B,1,H,W)."""
    if _dense_is_faster(ctx, period):
        left, right = value_factors(ctx, period, seed)
        return (left @ right.transpose(1, 2)).unsqueeze(1)
    i0, i1, w0, w1, _, _ = lattice_taps(ctx, period)
    return _separable_sparse(lattice_hash(ctx, period, seed), (i0, i1, w0, w1), (i0, i1, w0, w1)).unsqueeze(1)


_LINEAR_FACTORS = {perlin: perlin_factors, value_noise: value_factors}


def octave_period(base: torch.Tensor, lacunarity: torch.Tensor, octave: int, res: int) -> torch.Tensor:
    """Integer period of an fBm octave (integer so the octave tiles), capped at half the resolution."""
    p = torch.round(base.float() * lacunarity.float() ** octave)
    return p.clamp(1, res // 2).long()


def octave_amplitudes(persistence: torch.Tensor, octaves: torch.Tensor) -> torch.Tensor:
    """(B, max octaves) amplitude of each octave per sample: persistence^o, zero past its octave count."""
    o = torch.arange(int(octaves.max()), device=persistence.device).view(1, -1)
    return persistence.view(-1, 1) ** o * (o < octaves.view(-1, 1))


def fbm(ctx: NodeContext, basis, scale: torch.Tensor, octaves: torch.Tensor, persistence: torch.Tensor,
        lacunarity: torch.Tensor, seed: torch.Tensor, gain: torch.Tensor | None = None,
        bias: torch.Tensor | float = 0.0) -> torch.Tensor:
    """gain · (amplitude-weighted mean of octaves of `basis(ctx, period, seed)`) + bias; (B,1,H,W).

    For the linear bases (Perlin, value noise) every dense octave is a product of interpolation
    factors, so their weighted sum is one matmul over the concatenated factors (weights and gain
    folded into the small left factor, bias added by the same kernel): one full-resolution write
    for the whole fBm instead of a handful of passes per octave.
    """
    amps = octave_amplitudes(persistence, octaves)
    weights = amps / amps.sum(1, keepdim=True)
    if gain is not None:
        weights = weights * gain.view(-1, 1)
    factors = _LINEAR_FACTORS.get(basis)
    lefts, rights, total = [], [], None
    for o in range(weights.shape[1]):
        period = octave_period(scale, lacunarity, o, ctx.res)
        octave_seed = hash_u32(seed, torch.full_like(seed, o))
        if factors is not None and _dense_is_faster(ctx, period):
            left, right = factors(ctx, period, octave_seed)
            lefts.append(left * weights[:, o].view(-1, 1, 1))
            rights.append(right)
        else:
            term = basis(ctx, period, octave_seed).mul_(bc(weights[:, o]))
            total = term if total is None else total.add_(term)
    bias = torch.as_tensor(bias, dtype=torch.float32, device=ctx.device).expand(ctx.batch)
    if lefts:
        dense = torch.baddbmm(bias.view(-1, 1, 1), torch.cat(lefts, 2), torch.cat(rights, 2).transpose(1, 2))
        return dense.unsqueeze(1) if total is None else total.add_(dense.unsqueeze(1))
    return total.add_(bc(bias))


def frequencies(res: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency grids (cycles per image) matching torch.fft.rfft2 of an (H,W)=(res,res) image."""
    fy = torch.fft.fftfreq(res, d=1.0 / res, device=device).view(1, 1, -1, 1)
    fx = torch.fft.rfftfreq(res, d=1.0 / res, device=device).view(1, 1, 1, -1)
    return fx, fy


def fft_filter(img: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Circular (hence tileable) convolution by a frequency response shaped like rfft2(img)."""
    spec = torch.fft.rfft2(img)
    return torch.fft.irfft2(spec * response, s=img.shape[-2:])


def gaussian_blur(img: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur with standard deviation `sigma_px` (B,) in pixels; wraps around."""
    res = img.shape[-1]
    fx, fy = frequencies(res, img.device)
    s = bc(sigma_px) / res
    response = torch.exp(-2 * (math.pi ** 2) * (s ** 2) * (fx ** 2 + fy ** 2))
    return fft_filter(img, response)


def gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences with wrap-around, in units per pixel."""
    dx = (torch.roll(img, -1, dims=-1) - torch.roll(img, 1, dims=-1)) * 0.5
    dy = (torch.roll(img, -1, dims=-2) - torch.roll(img, 1, dims=-2)) * 0.5
    return dx, dy


def luminance(img: torch.Tensor) -> torch.Tensor:
    if img.shape[1] == 1:
        return img
    w = torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def full(ctx: NodeContext, value: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """A constant image per sample from a (B,) or (B,C) parameter."""
    return bc(value).float().expand(ctx.batch, channels, ctx.res, ctx.res).contiguous()
