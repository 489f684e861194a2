"""Fast, wrap-around building blocks for the filter nodes.

Chosen by measurement on one CPU core at 256², batch 8: `grid_sample` on a one-pixel circular
pad is about 20x faster than gather-based bilinear lookups; complex-by-real products through
`view_as_real` are 5x faster than broadcasting a real response onto a complex spectrum;
`torch.where`/`sign` cost as much as 40 multiplies, so selections are written as lerps by masks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from graph_executor.nodes._common import bc, frequencies, into

REFERENCE_RES = 256
CHUNK_PIXELS = 256 * 256


def in_chunks(fn):
    """Run a node function on slices of the batch of about CHUNK_PIXELS pixels each.

    Nodes that chain many full-resolution passes are faster on CPU when their temporaries stay
    cache-sized and are recycled by the allocator instead of being mapped afresh (hsl inside the
    library graphs at 256², batch 8: 15% faster in chunks of one sample). On CUDA the whole batch
    runs at once: there, chunks would only multiply kernel launches (measured 836 samples/s on an
    H100 for the median library graph with chunking at B=1024).
    """

    @functools.wraps(fn)
    def run(ctx, inputs, p):
        rows_per_chunk = max(1, CHUNK_PIXELS // (ctx.res * ctx.res))
        if ctx.device.type != "cpu" or ctx.batch <= rows_per_chunk:
            return fn(ctx, inputs, p)
        parts = []
        for start in range(0, ctx.batch, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            sub = dataclasses.replace(ctx, batch=len(range(ctx.batch)[rows]), seed=ctx.seed[rows])
            parts.append(fn(sub, {k: None if v is None else v[rows] for k, v in inputs.items()},
                            {k: v[rows] for k, v in p.items()}))
        return {port: torch.cat([part[port] for part in parts]) for port in parts[0]}

    return run


def px(length: torch.Tensor, res: int) -> torch.Tensor:
    """A length given in pixels at 256² expressed in pixels at `res`, so filters scale with resolution."""
    return length * (res / REFERENCE_RES)


def groups(values: torch.Tensor) -> Iterator[tuple[int, torch.Tensor | None]]:
    """(value, row indices) per distinct per-sample int/enum value; rows is None when all agree."""
    first = values[0]
    if bool((values == first).all()):
        yield int(first), None
        return
    for v in torch.unique(values).tolist():
        yield int(v), (values == v).nonzero().squeeze(1)


def by_group(values: torch.Tensor, img: torch.Tensor, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply fn(value, sub_batch) to the samples sharing each distinct value of an int/enum parameter."""
    out = None
    for v, rows in groups(values):
        if rows is None:
            return fn(v, img)
        part = fn(v, img[rows])
        if out is None:
            out = img.new_empty((img.shape[0],) + part.shape[1:])
        out[rows] = part
    return out


def fft_convolve(img: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Circular convolution by a real frequency response shaped (B, C or 1 or K, H, W//2+1).

    A response with K channels against a one-channel image gives K filtered copies from one
    forward transform.
    """
    spec = torch.fft.rfft2(img)
    if spec.shape[1] == 1 and response.shape[1] > 1:
        spec = spec.expand(-1, response.shape[1], -1, -1)
    spec = torch.view_as_complex(torch.view_as_real(spec) * response.unsqueeze(-1))
    return torch.fft.irfft2(spec, s=img.shape[-2:])


def gaussian_response(res: int, sigma_x: torch.Tensor, sigma_y: torch.Tensor | None = None,
                      device=None) -> torch.Tensor:
    """Separable Gaussian frequency response (B,1,res,res//2+1) for per-sample sigmas in pixels."""
    fx, fy = frequencies(res, device if device is not None else sigma_x.device)
    sigma_y = sigma_x if sigma_y is None else sigma_y
    k = -2 * math.pi ** 2 / res ** 2
    return torch.exp(k * bc(sigma_y) ** 2 * fy ** 2) * torch.exp(k * bc(sigma_x) ** 2 * fx ** 2)


def directional_gaussian_response(res: int, sigma: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Gaussian blur along the per-sample unit direction (dx, dy) in image axes (y down)."""
    fx, fy = frequencies(res, sigma.device)
    along = fx * bc(dx) + fy * bc(dy)
    return torch.exp((-2 * math.pi ** 2 / res ** 2) * bc(sigma) ** 2 * along * along)


def wrap_lookup(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of img (B,C,H,W) at image-unit coordinates x, y (B,1,H',W'); wraps around.

    The coordinates are reduced modulo 1 and sampled from a copy padded by one pixel circularly,
    so bilinear interpolation across the seam reads the opposite edge.
    """
    B, _, H, W = img.shape
    padded = F.pad(img, (1, 1, 1, 1), mode="circular")
    grid = img.new_empty((B,) + tuple(x.shape[-2:]) + (2,))
    grid[..., 0] = ((x - torch.floor(x)) * (2 * W / (W + 2)) + (2 / (W + 2) - 1))[:, 0]
    grid[..., 1] = ((y - torch.floor(y)) * (2 * H / (H + 2)) + (2 / (H + 2) - 1))[:, 0]
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


def lut_lookup(img: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per-sample lookup table: img (B,1,H,W) in [0,1] through lut (B,C,L), linear between entries."""
    B, _, H, W = img.shape
    grid = img.new_zeros((B, H, W, 2))
    grid[..., 0] = img[:, 0].clamp(0, 1) * 2 - 1
    return F.grid_sample(lut.unsqueeze(2), grid, mode="bilinear", padding_mode="border", align_corners=True)


def monotone_cubic(knots: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Fritsch-Carlson monotone cubic through values (B,K) at uniform knots on [0,1], at x (L,).

    Slopes are harmonic means of neighbouring secants (zero at extrema), so each span stays
    between its end values: no overshoot, and the curve keeps [0,1] values inside [0,1].
    """
    B, K = knots.shape
    h = 1.0 / (K - 1)
    secant = (knots[:, 1:] - knots[:, :-1]) / h
    left, right = secant[:, :-1], secant[:, 1:]
    same_sign = (left * right > 0).float()
    harmonic = 2 * left * right / torch.where(same_sign > 0, left + right, torch.ones_like(left))
    slopes = torch.cat([secant[:, :1], harmonic * same_sign, secant[:, -1:]], 1)
    pos = x.clamp(0, 1) * (K - 1)
    seg = torch.clamp(torch.floor(pos), max=K - 2).long()
    t = (pos - seg).unsqueeze(0)
    y0, y1 = knots[:, seg], knots[:, seg + 1]
    m0, m1 = slopes[:, seg] * h, slopes[:, seg + 1] * h
    t2, t3 = t * t, t * t * t
    return ((2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * m0 + (-2 * t3 + 3 * t2) * y1
            + (t3 - t2) * m1)


def window_max(img: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over the wrapped window [i-radius, i+radius] along `dim`, in O(log radius) rolls."""
    if radius <= 0:
        return img
    width = 2 * radius + 1
    m, span = img, 1
    while span * 2 <= width:
        m = torch.maximum(m, torch.roll(m, -span, dim))
        span *= 2
    return torch.maximum(torch.roll(m, radius, dim), torch.roll(m, -(radius - span + 1), dim))


def dilate(img: torch.Tensor, radius: int) -> torch.Tensor:
    """Wrapped grey dilation by a rounded (octagon-like) element: the union of three rectangles.

    A disc of radius r is approximated by rectangles of half-sizes (r, 0.38r), (0.38r, r) and
    (0.71r, 0.71r); each is separable, so the cost is logarithmic in the radius.
    """
    if radius <= 0:
        return img
    thin, square = round(0.38 * radius), round(0.71 * radius)
    wide_x = window_max(img, radius, -1)
    narrow_x = window_max(img, thin, -1)
    out = torch.maximum(window_max(wide_x, thin, -2), window_max(narrow_x, radius, -2))
    return torch.maximum(out, window_max(window_max(img, square, -1), square, -2))


def step(x: torch.Tensor) -> torch.Tensor:
    """1 where x >= 0 else 0, as floats (cheaper than torch.where)."""
    return (x >= 0).to(x.dtype)


def rgb_to_hsl(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in sextants [0,6) (the hexagonal HSL hue times 6), saturation, lightness; each (B,1,H,W).

    Branch-free (two comparisons pick the largest channel, after Sam Hocevar's GLSL rgb2hsv),
    and in place on its own temporaries: large allocations are what this costs on CPU.
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    g_wins = step(g - b)
    big, small = torch.lerp(b, g, g_wins), torch.lerp(g, b, g_wins)
    base_gb = g_wins - 1  # hue offset in turns when the max is g or b: -1 or 0
    base_r = g_wins.mul_(-1).add_(2 / 3)  # ... and when it is r: 2/3 or -1/3
    r_wins = step(r - big)
    hi = torch.lerp(big, r, r_wins)
    base = base_r.lerp_(base_gb, r_wins)
    other = big.sub_(r).mul_(r_wins).add_(r)  # the channel paired with `small` in the hue difference
    lo = torch.minimum(other, small)
    chroma = hi - lo
    hue = other.sub_(small).div_(chroma * 6 + 1e-12).add_(base).abs_().mul_(6)
    light = hi.add_(lo).mul_(0.5)
    denom = into(torch.mul, light, 2, out=lo).sub_(1).abs_().neg_().add_(1).clamp_(min=1e-12)
    return hue, chroma.div_(denom).clamp_(0, 1), light


def hsl_to_rgb(hue: torch.Tensor, sat: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Inverse of rgb_to_hsl for hue in sextants (any real; wraps every 6)."""
    a = torch.minimum(light, 1 - light).mul_(sat)
    offsets = torch.tensor([0.0, 8.0, 4.0], device=hue.device, dtype=hue.dtype).view(1, 3, 1, 1)
    k = torch.add(offsets, hue, alpha=2)
    k.sub_(k.mul(1 / 12).floor_().mul_(12))
    falling = torch.sub(9, k)
    ramp = into(torch.minimum, k.sub_(3), falling, out=falling).clamp_(-1, 1)
    return ramp.mul_(a).neg_().add_(light)


def rgb_to_hsl_reference(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`rgb_to_hsl` written out of place: the same values, and autograd can differentiate it (the
    in-place version overwrites temporaries the backward pass needs). Used when gradients are recorded."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    g_wins = step(g - b)
    big, small = torch.lerp(b, g, g_wins), torch.lerp(g, b, g_wins)
    r_wins = step(r - big)
    hi = torch.lerp(big, r, r_wins)
    base = torch.lerp(2 / 3 - g_wins, g_wins - 1, r_wins)
    other = (big - r) * r_wins + r
    lo = torch.minimum(other, small)
    chroma = hi - lo
    hue = ((other - small) / (chroma * 6 + 1e-12) + base).abs() * 6
    light = (hi + lo) * 0.5
    denom = (1 - (light * 2 - 1).abs()).clamp(min=1e-12)
    return hue, (chroma / denom).clamp(0, 1), light


def hsl_to_rgb_reference(hue: torch.Tensor, sat: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """`hsl_to_rgb` written out of place (see `rgb_to_hsl_reference`)."""
    a = torch.minimum(light, 1 - light) * sat
    offsets = torch.tensor([0.0, 8.0, 4.0], device=hue.device, dtype=hue.dtype).view(1, 3, 1, 1)
    k = offsets + hue * 2
    k = k - torch.floor(k * (1 / 12)) * 12
    ramp = torch.minimum(k - 3, 9 - k).clamp(-1, 1)
    return light - ramp * a
