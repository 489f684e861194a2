"""Filters: blending, tone and colour adjustments, spatial filters, and height-derived maps.

Conventions: inputs and outputs are in [0,1]; lengths are in pixels at 256² (scaled with the
resolution); angles are in degrees, 0 pointing right and 90 up; slopes are in value units per
image width. Every spatial operation wraps around (FFT, rolls or wrapped lookups), so a tileable
input gives a tileable output. Integer and enum parameters may differ per sample: samples are
grouped by value or selected with masks.
"""

from __future__ import annotations

import math

import torch

from graph_executor.nodes._common import bc, branch_free, gradients, records_grad
from graph_executor.nodes._filters_util import (
    by_group, dilate, in_chunks, directional_gaussian_response, fft_convolve, gaussian_response, groups, hsl_to_rgb,
    hsl_to_rgb_reference, lut_lookup, monotone_cubic, px, rgb_to_hsl, rgb_to_hsl_reference, step, wrap_lookup,
)
from graph_executor.schema import P, node

LUT_SIZE = 257
SLOPE_DISPLACEMENT = 0.002  # image widths of displacement per unit of slope and of intensity
EMBOSS_SHADING = 0.02  # change of value per unit of slope and of intensity
SLOPE_BLUR_ROUNDS = 4  # 2**4 taps


def _both(type: str, *, inputs: dict[str, str], params: list, color_ports: tuple[str, ...] = ("in",)):
    """Register a channel-agnostic filter twice: `type` on gray ports and `type_color` on colour ports."""

    def register(fn):
        node(type, "filter", inputs=inputs, params=params)(fn)
        color_inputs = {k: ("color" if k in color_ports else v) for k, v in inputs.items()}
        node(f"{type}_color", "filter", inputs=color_inputs, outputs={"out": "color"}, params=params)(fn)
        return fn

    return register


def _direction(angle_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vector in image axes (x right, y down) for angles measured counter-clockwise from right."""
    a = angle_deg * (math.pi / 180)
    return torch.cos(a), -torch.sin(a)


def _slope(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrapped central-difference gradient in value units per image width."""
    dx, dy = gradients(img)
    res = img.shape[-1]
    return dx * res, dy * res


# ---------------------------------------------------------------- blending

BLEND_MODES = ("copy", "add", "subtract", "multiply", "screen", "overlay", "darken", "lighten",
               "difference", "soft_light", "hard_light", "divide")


def _hard_light(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lerp(2 * a * b, 1 - 2 * (1 - a) * (1 - b), step(a - 0.5))


def _blend_mode(mode: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Blend foreground a over background b with a Substance-style mode (before opacity)."""
    if mode == "copy":
        return a
    if mode == "add":
        return a + b
    if mode == "subtract":
        return b - a
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return _hard_light(b, a)
    if mode == "darken":
        return torch.minimum(a, b)
    if mode == "lighten":
        return torch.maximum(a, b)
    if mode == "difference":
        return (a - b).abs()
    if mode == "soft_light":
        return (1 - 2 * a) * b * b + 2 * a * b
    if mode == "hard_light":
        return _hard_light(a, b)
    if mode == "divide":
        return b / a.clamp(min=1e-3)
    raise ValueError(mode)


def _blend_selected(modes: torch.Tensor, present, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Every sample blended with its own mode, by selecting among whole-batch blends of the modes in
    `present` (no index lists: under torch.compile all twelve fuse into one kernel)."""
    mode = bc(modes)
    mixed = None
    for index in present:
        blended = _blend_mode(BLEND_MODES[index], fg, bg)
        mixed = blended if mixed is None else torch.where(mode == index, blended, mixed)
    return mixed


def _blend(ctx, inputs, p):
    fg, bg, mask = inputs["foreground"], inputs["background"], inputs["mask"]
    channels = max(fg.shape[1], bg.shape[1])
    fg, bg = fg.expand(-1, channels, -1, -1), bg.expand(-1, channels, -1, -1)
    if branch_free(ctx):
        # compiled: all modes, fused; eager GPU: the modes present, read in one host transfer (a
        # fixed-size presence mask: torch.unique would wait for the GPU twice, for its size and values)
        if torch.compiler.is_compiling():
            present = range(len(BLEND_MODES))
        else:
            modes = torch.arange(len(BLEND_MODES), device=p["mode"].device)
            hits = (p["mode"].reshape(-1, 1) == modes).any(0).tolist()
            present = [index for index, hit in enumerate(hits) if hit]
        mixed = _blend_selected(p["mode"], present, fg, bg)
        alpha = bc(p["opacity"]) if mask is None else bc(p["opacity"]) * mask
        return {"out": torch.lerp(bg, mixed.clamp(0, 1), alpha)}
    mixed = None
    for index, rows in groups(p["mode"]):
        if rows is None:
            mixed = _blend_mode(BLEND_MODES[index], fg, bg)
            break
        if mixed is None:
            mixed = torch.empty_like(bg)
        mixed[rows] = _blend_mode(BLEND_MODES[index], fg[rows], bg[rows])
    alpha = bc(p["opacity"])
    if mask is not None:
        alpha = alpha * mask
    return {"out": torch.lerp(bg, mixed.clamp(0, 1), alpha)}


_BLEND_PARAMS = [P("mode", "enum", "copy", choices=BLEND_MODES), P("opacity", "float", 1.0, 0.0, 1.0)]
node("blend", "filter", inputs={"foreground": "gray", "background": "gray", "mask": "gray"},
     params=_BLEND_PARAMS, optional=("mask",))(_blend)
node("blend_color", "filter", inputs={"foreground": "color", "background": "color", "mask": "gray"},
     outputs={"out": "color"}, params=_BLEND_PARAMS, optional=("mask",))(_blend)


# ---------------------------------------------------------------- tone and colour

@_both("levels", inputs={"in": "gray"}, params=[
    P("in_low", "float", 0.0, 0.0, 1.0), P("in_high", "float", 1.0, 0.0, 1.0),
    P("gamma", "float", 1.0, 0.2, 5.0),
    P("out_low", "float", 0.0, 0.0, 1.0), P("out_high", "float", 1.0, 0.0, 1.0),
])
def levels(ctx, inputs, p):
    """Remap input range [in_low,in_high] through a gamma to [out_low,out_high] (in_high < in_low inverts)."""
    lo, hi = bc(p["in_low"]), bc(p["in_high"])
    span = hi - lo
    span = torch.lerp(-span.abs().clamp(min=1e-3), span.abs().clamp(min=1e-3), step(span))
    t = ((inputs["in"] - lo) / span).clamp(0, 1)
    if branch_free(ctx) or p["gamma"].requires_grad or bool((p["gamma"] != 1).any()):  # x ** 1 == x: the check only saves a pass; refinement at gamma 1 still needs the path
        t = t ** (1.0 / bc(p["gamma"]))
    return {"out": torch.lerp(bc(p["out_low"]).expand_as(t), bc(p["out_high"]).expand_as(t), t)}


@node("curve", "filter", inputs={"in": "gray"}, params=[
    P(f"at_{pct}", "float", pct / 100, 0.0, 1.0, doc=f"output value at input {pct / 100:g}")
    for pct in (0, 25, 50, 75, 100)
])
def curve(ctx, inputs, p):
    """Tone curve: a monotone cubic through five control values at inputs 0, 0.25, 0.5, 0.75, 1."""
    knots = torch.stack([p[f"at_{pct}"] for pct in (0, 25, 50, 75, 100)], 1)
    x = torch.linspace(0, 1, LUT_SIZE, device=knots.device)
    return {"out": lut_lookup(inputs["in"], monotone_cubic(knots, x).unsqueeze(1)).clamp(0, 1)}


GRADIENT_ANCHORS = 4
_GRADIENT_DEFAULTS = ([0.05, 0.04, 0.03], [0.35, 0.25, 0.15], [0.7, 0.55, 0.4], [0.95, 0.9, 0.8])


@node("gradient_map", "filter", inputs={"in": "gray"}, outputs={"out": "color"}, params=[
    spec for i in range(GRADIENT_ANCHORS) for spec in (
        P(f"color_{i}", "color", _GRADIENT_DEFAULTS[i]),
        P(f"position_{i}", "float", i / (GRADIENT_ANCHORS - 1), 0.0, 1.0,
          doc="anchor position; anchors are sorted per sample"),
    )
])
def gradient_map(ctx, inputs, p):
    """Map gray values to colours, linearly between four anchors; below/above the ends take the end colours."""
    pos = torch.stack([p[f"position_{i}"] for i in range(GRADIENT_ANCHORS)], 1)
    colors = torch.stack([p[f"color_{i}"] for i in range(GRADIENT_ANCHORS)], 1)
    pos, order = torch.sort(pos, 1)
    colors = colors.gather(1, order.unsqueeze(2).expand(-1, -1, 3))
    x = inputs["in"]
    out = bc(colors[:, 0]).expand(-1, 3, *x.shape[-2:]).contiguous()
    for k in range(GRADIENT_ANCHORS - 1):
        inv_width = 1 / (pos[:, k + 1] - pos[:, k]).clamp(min=1e-6)
        ramp = torch.addcmul(bc(-pos[:, k] * inv_width), x, bc(inv_width)).clamp_(0, 1)
        out.addcmul_(bc(colors[:, k + 1] - colors[:, k]), ramp)
    return {"out": out.clamp_(0, 1)}


def _push(value: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Move a [0,1] value toward 1 (amount > 0) or 0 (amount < 0) by |amount| of the way, in place."""
    a = bc(amount)
    return value.add_(torch.lerp(value, 1 - value, step(a)).mul_(a))


@node("hsl", "filter", inputs={"in": "color"}, outputs={"out": "color"}, params=[
    P("hue", "float", 0.0, -0.5, 0.5, doc="hue rotation in turns"),
    P("saturation", "float", 0.0, -1.0, 1.0, doc="toward gray (<0) or full saturation (>0)"),
    P("lightness", "float", 0.0, -1.0, 1.0, doc="toward black (<0) or white (>0)"),
])
@in_chunks
def hsl(ctx, inputs, p):
    """Hue / saturation / lightness adjustment in HSL space; zero shifts are the identity."""
    if records_grad(inputs["in"], p["hue"], p["saturation"], p["lightness"]):  # refinement: out of place
        hue, sat, light = rgb_to_hsl_reference(inputs["in"])
        out = hsl_to_rgb_reference(hue + 6 * bc(p["hue"]), _push(sat.clone(), p["saturation"]),
                                   _push(light.clone(), p["lightness"]))
        return {"out": out.clamp(0, 1)}
    hue, sat, light = rgb_to_hsl(inputs["in"])
    out = hsl_to_rgb(hue.add_(6 * bc(p["hue"])), _push(sat, p["saturation"]), _push(light, p["lightness"]))
    return {"out": out.clamp_(0, 1)}


@_both("invert", inputs={"in": "gray"}, params=[])
def invert(ctx, inputs, p):
    """1 - x."""
    return {"out": 1 - inputs["in"]}


@node("threshold", "filter", inputs={"in": "gray"},
      params=[P("threshold", "float", 0.5, 0.0, 1.0, differentiable=False, doc="a step: no gradient")])
def threshold(ctx, inputs, p):
    """Binary mask: 1 where the input is at least the threshold, else 0."""
    return {"out": step(inputs["in"] - bc(p["threshold"]))}


def _ramp(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return ((x - lo) / (hi - lo).clamp(min=1e-4)).clamp(0, 1)


@node("histogram_scan", "filter", inputs={"in": "gray"}, params=[
    P("position", "float", 0.5, 0.0, 1.0, doc="0 gives black, 1 white; 0.5 with contrast 0 is the identity"),
    P("contrast", "float", 0.5, 0.0, 1.0, doc="1 is a hard threshold"),
])
def histogram_scan(ctx, inputs, p):
    """Substance-style histogram scan: a contrast ramp that sweeps through the input's values."""
    pos = 1 - p["position"]
    start = (pos.clamp(min=0.5) - 0.5) * 2
    end = (pos * 2).clamp(max=1)
    w = (p["contrast"] * 0.5).clamp(0, 1)
    lo = torch.lerp(start, end, w).clamp(0, 1)
    hi = torch.lerp(end, start, w).clamp(0, 1)
    return {"out": _ramp(inputs["in"], bc(lo), bc(hi))}


@node("histogram_range", "filter", inputs={"in": "gray"}, params=[
    P("range", "float", 0.5, 0.0, 1.0, doc="width of the output range"),
    P("position", "float", 0.5, 0.0, 1.0, doc="centre of the output range"),
])
def histogram_range(ctx, inputs, p):
    """Compress the values into a range of given width around a position (Substance Histogram Range)."""
    lo = 1 - (p["range"] * 0.5 + 1 - p["position"]).clamp(max=1)
    hi = (p["range"] * 0.5 + p["position"]).clamp(max=1)
    return {"out": torch.lerp(bc(lo).expand_as(inputs["in"]), bc(hi).expand_as(inputs["in"]), inputs["in"])}


@node("clamp", "filter", inputs={"in": "gray"}, params=[
    P("low", "float", 0.0, 0.0, 1.0), P("high", "float", 1.0, 0.0, 1.0, doc="wins over low when below it"),
])
def clamp(ctx, inputs, p):
    """Clamp values to [low, high]."""
    return {"out": torch.minimum(torch.maximum(inputs["in"], bc(p["low"])), bc(p["high"]))}


@node("gamma", "filter", inputs={"in": "gray"}, params=[P("gamma", "float", 1.0, 0.1, 10.0)])
def gamma(ctx, inputs, p):
    """x ** gamma (above 1 darkens, below 1 brightens)."""
    return {"out": inputs["in"].clamp(min=0) ** bc(p["gamma"])}


@node("grayscale", "filter", inputs={"in": "color"}, params=[
    P("weights", "vector", [0.299, 0.587, 0.114], 0.0, 1.0, size=3, doc="red, green, blue weights (normalised)"),
])
def grayscale(ctx, inputs, p):
    """Weighted average of the colour channels."""
    w = p["weights"]
    w = w / w.sum(1, keepdim=True).clamp(min=1e-3)
    return {"out": (inputs["in"] * bc(w)).sum(1, keepdim=True).clamp(0, 1)}


@node("channel_split", "filter", inputs={"in": "color"}, outputs={"r": "gray", "g": "gray", "b": "gray"})
def channel_split(ctx, inputs, p):
    """Split a colour image into its red, green and blue channels."""
    x = inputs["in"]
    return {"r": x[:, 0:1], "g": x[:, 1:2], "b": x[:, 2:3]}


@node("channel_merge", "filter", inputs={"r": "gray", "g": "gray", "b": "gray"}, outputs={"out": "color"})
def channel_merge(ctx, inputs, p):
    """Merge three gray images into the red, green and blue channels of a colour image."""
    return {"out": torch.cat([inputs["r"], inputs["g"], inputs["b"]], 1)}


@node("tint", "filter", inputs={"in": "color"}, outputs={"out": "color"}, params=[
    P("color", "color", [1.0, 1.0, 1.0]),
])
def tint(ctx, inputs, p):
    """Multiply by a uniform colour (a gray input becomes a colour image)."""
    return {"out": inputs["in"] * bc(p["color"])}


# ---------------------------------------------------------------- blurs and convolutions

@_both("blur", inputs={"in": "gray"}, params=[
    P("sigma", "float", 2.0, 0.0, 32.0, doc="Gaussian standard deviation in pixels at 256²"),
])
def blur(ctx, inputs, p):
    """Gaussian blur (FFT, wraps around)."""
    response = gaussian_response(ctx.res, px(p["sigma"], ctx.res))
    return {"out": fft_convolve(inputs["in"], response).clamp(0, 1)}


@_both("sharpen", inputs={"in": "gray"}, params=[
    P("intensity", "float", 1.0, 0.0, 4.0),
    P("radius", "float", 1.0, 0.5, 8.0, doc="unsharp-mask blur sigma in pixels at 256²"),
])
def sharpen(ctx, inputs, p):
    """Unsharp mask: x + intensity * (x - blur(x))."""
    g = gaussian_response(ctx.res, px(p["radius"], ctx.res))
    return {"out": fft_convolve(inputs["in"], 1 + bc(p["intensity"]) * (1 - g)).clamp(0, 1)}


@node("directional_blur", "filter", inputs={"in": "gray"}, params=[
    P("sigma", "float", 4.0, 0.0, 32.0, doc="Gaussian standard deviation along the direction, pixels at 256²"),
    P("angle", "float", 0.0, 0.0, 180.0, doc="direction in degrees"),
])
def directional_blur(ctx, inputs, p):
    """Gaussian motion blur along one direction (FFT, wraps around)."""
    dx, dy = _direction(p["angle"])
    response = directional_gaussian_response(ctx.res, px(p["sigma"], ctx.res), dx, dy)
    return {"out": fft_convolve(inputs["in"], response).clamp(0, 1)}


NON_UNIFORM_LEVELS = 4


@node("non_uniform_blur", "filter", inputs={"in": "gray", "amount": "gray"}, params=[
    P("sigma", "float", 8.0, 0.0, 32.0, doc="blur where amount is 1, pixels at 256²"),
])
def non_uniform_blur(ctx, inputs, p):
    """Blur whose strength follows the amount map: blends a stack of Gaussian blurs per pixel.

    The stack holds the input and blurs at sigma/3, 2sigma/3 and sigma (one forward FFT).
    """
    sigma = px(p["sigma"], ctx.res)
    responses = torch.cat([gaussian_response(ctx.res, sigma * (k / (NON_UNIFORM_LEVELS - 1)))
                           for k in range(1, NON_UNIFORM_LEVELS)], 1)
    stack = torch.cat([inputs["in"], fft_convolve(inputs["in"], responses)], 1)
    t = inputs["amount"].clamp(0, 1) * (NON_UNIFORM_LEVELS - 1)
    out = torch.zeros_like(inputs["in"])
    for k in range(NON_UNIFORM_LEVELS):
        out = out + (1 - (t - k).abs()).clamp(min=0) * stack[:, k:k + 1]
    return {"out": out.clamp(0, 1)}


def _step_edge_peak(sigma: torch.Tensor, res: int) -> torch.Tensor:
    """Peak central difference of a unit step blurred by sigma (B,) pixels: edge_detect's normaliser."""
    line = torch.zeros(sigma.shape[0], res, device=sigma.device)
    line[:, res // 2:] = 1
    f = torch.fft.rfftfreq(res, d=1.0 / res, device=sigma.device)
    smooth = torch.fft.irfft(torch.fft.rfft(line) * torch.exp(-2 * (math.pi * sigma.view(-1, 1) * f / res) ** 2), n=res)
    return ((torch.roll(smooth, -1, 1) - torch.roll(smooth, 1, 1)) * 0.5).abs().amax(1)


@node("edge_detect", "filter", inputs={"in": "gray"}, params=[
    P("width", "float", 1.5, 0.5, 8.0, doc="edge width (smoothing sigma) in pixels at 256²"),
    P("intensity", "float", 1.0, 0.0, 4.0, doc="height of the line a unit step gives"),
])
def edge_detect(ctx, inputs, p):
    """Gradient magnitude of the smoothed input, normalised so a unit step gives a line of height intensity."""
    sigma = px(p["width"], ctx.res)
    smooth = fft_convolve(inputs["in"], gaussian_response(ctx.res, sigma))
    dx, dy = gradients(smooth)
    scale = bc(p["intensity"] / _step_edge_peak(sigma, ctx.res))
    return {"out": ((dx * dx + dy * dy).sqrt() * scale).clamp(0, 1)}


@node("emboss", "filter", inputs={"in": "gray", "height": "gray"}, optional=("height",), params=[
    P("intensity", "float", 1.0, 0.0, 10.0, doc="shading per unit of slope is intensity / 50"),
    P("angle", "float", 135.0, 0.0, 360.0, doc="direction toward the light, degrees"),
])
def emboss(ctx, inputs, p):
    """Shade the input by the slopes of a height map (the input itself when none) lit from one side."""
    height = inputs["height"] if inputs["height"] is not None else inputs["in"]
    gx, gy = _slope(height)
    lx, ly = _direction(p["angle"])
    facing = gx * bc(lx) + gy * bc(ly)
    return {"out": (inputs["in"] - bc(p["intensity"] * EMBOSS_SHADING) * facing).clamp(0, 1)}


MORPHOLOGY = ("dilate", "erode")


@node("dilate_erode", "filter", inputs={"in": "gray"}, params=[
    P("mode", "enum", "dilate", choices=MORPHOLOGY),
    P("radius", "float", 4.0, 0.0, 32.0, differentiable=False,
      doc="structuring element radius in pixels at 256² (rounded to whole pixels: no gradient)"),
])
def dilate_erode(ctx, inputs, p):
    """Grey morphological dilation (max) or erosion (min) over a rounded neighbourhood; wraps around."""
    sign = 1 - 2 * (p["mode"] == MORPHOLOGY.index("erode")).to(inputs["in"].dtype)
    signed = inputs["in"] * bc(sign)
    radius = torch.round(px(p["radius"], ctx.res)).long()
    return {"out": by_group(radius, signed, lambda r, x: dilate(x, r)) * bc(sign)}


AO_RADII = (0.25, 0.5, 1.0)


@node("ambient_occlusion", "filter", inputs={"height": "gray"}, params=[
    P("radius", "float", 16.0, 1.0, 64.0, doc="largest sampling radius in pixels at 256²"),
    P("intensity", "float", 4.0, 0.0, 20.0, doc="occlusion per unit of height below the surroundings"),
])
def ambient_occlusion(ctx, inputs, p):
    """Cavity-style ambient occlusion: 1 minus how far the height lies below its blurred surroundings.

    The surroundings average Gaussian blurs at three radii; the difference is taken in one
    frequency-domain pass. 1 is unoccluded.
    """
    sigma = px(p["radius"], ctx.res)
    response = sum(gaussian_response(ctx.res, sigma * r) for r in AO_RADII) / len(AO_RADII) - 1
    depth = fft_convolve(inputs["height"], response)
    return {"out": 1 - (depth * bc(p["intensity"])).clamp(0, 1)}


# ---------------------------------------------------------------- warps and transforms

_WARP_INTENSITY = P("intensity", "float", 1.0, 0.0, 10.0,
                    doc="displacement in image widths is intensity / 500 per unit of slope")


def _coords(ctx) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = ctx.coords()
    return x[..., :1, :], y[..., :, :1]


@_both("warp", inputs={"in": "gray", "warp": "gray"}, params=[_WARP_INTENSITY])
def warp(ctx, inputs, p):
    """Displace the input along the slope of the warp map (the warp map's gradient times intensity)."""
    gx, gy = _slope(inputs["warp"])
    k = bc(p["intensity"] * SLOPE_DISPLACEMENT)
    x, y = _coords(ctx)
    return {"out": wrap_lookup(inputs["in"], x + gx * k, y + gy * k).clamp(0, 1)}


@_both("directional_warp", inputs={"in": "gray", "warp": "gray"}, params=[
    P("intensity", "float", 0.05, 0.0, 0.5, doc="displacement in image widths where the warp map is 1"),
    P("angle", "float", 0.0, 0.0, 360.0, doc="displacement direction in degrees"),
])
def directional_warp(ctx, inputs, p):
    """Displace the input along one direction by the warp map's value times intensity."""
    dx, dy = _direction(p["angle"])
    m = inputs["warp"]
    x, y = _coords(ctx)
    return {"out": wrap_lookup(inputs["in"], x + m * bc(p["intensity"] * dx),
                               y + m * bc(p["intensity"] * dy)).clamp(0, 1)}


SLOPE_BLUR_MODES = ("blur", "min", "max")
_COMBINE = (lambda a, b: (a + b) * 0.5, torch.minimum, torch.maximum)


@node("slope_blur", "filter", inputs={"in": "gray", "slope": "gray"}, params=[
    _WARP_INTENSITY, P("mode", "enum", "blur", choices=SLOPE_BLUR_MODES, doc="average, minimum or maximum"),
])
def slope_blur(ctx, inputs, p):
    """Smear the input up the slope of a guide map: average (or min/max) of 16 taps along the slope.

    Taps are combined by doubling: each round merges the running result with itself read twice
    as far up the slope, so 16 taps cost 4 lookups, and far taps follow the local slope.
    """
    gx, gy = _slope(inputs["slope"])
    k = bc(p["intensity"] * SLOPE_DISPLACEMENT / (2 ** SLOPE_BLUR_ROUNDS - 1))
    gx, gy = gx * k, gy * k
    x, y = _coords(ctx)

    def smear(mode: int, img: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        for r in range(SLOPE_BLUR_ROUNDS):
            img = _COMBINE[mode](img, wrap_lookup(img, x + sx * 2 ** r, y + sy * 2 ** r))
        return img

    out = None
    for mode, rows in groups(p["mode"]):
        if rows is None:
            return {"out": smear(mode, inputs["in"], gx, gy).clamp(0, 1)}
        if out is None:
            out = torch.empty_like(inputs["in"])
        out[rows] = smear(mode, inputs["in"][rows], gx[rows], gy[rows])
    return {"out": out.clamp(0, 1)}


ROTATIONS = ("0", "90", "180", "270")
# Source coordinates of a counter-clockwise rotation by k*90 degrees: src = M @ (a, b) + c.
_ROTATION_MAPS = ((1, 0, 0, 1, 0, 0), (0, -1, 1, 0, 1, 0), (-1, 0, 0, -1, 1, 1), (0, 1, -1, 0, 0, 1))


@_both("transform_2d", inputs={"in": "gray"}, params=[
    P("tile_x", "int", 1, 1, 8, doc="copies across (scale down by this integer)"),
    P("tile_y", "int", 1, 1, 8, doc="copies down"),
    P("rotation", "enum", "0", choices=ROTATIONS, doc="counter-clockwise, degrees"),
    P("offset_x", "float", 0.0, 0.0, 1.0, doc="shift in tiles"),
    P("offset_y", "float", 0.0, 0.0, 1.0, doc="shift in tiles"),
])
def transform_2d(ctx, inputs, p):
    """Rotate by a multiple of 90 degrees, tile an integer number of times and shift; always tiles.

    Tiling minifies, so the input is first low-passed (Gaussian, sigma (k-1)/2 source pixels)
    along each source axis to avoid aliasing.
    """
    maps = torch.tensor(_ROTATION_MAPS, dtype=torch.float32, device=ctx.device)[p["rotation"]]
    m00, m01, m10, m11, c0, c1 = maps.unbind(1)
    kx, ky = p["tile_x"].float(), p["tile_y"].float()
    ox, oy = p["offset_x"], p["offset_y"]
    img = inputs["in"]
    along_x, along_y = m00.abs() * kx + m01.abs() * ky, m10.abs() * kx + m11.abs() * ky
    if branch_free(ctx) or bool(((along_x > 1) | (along_y > 1)).any()):  # sigma 0 is the identity
        img = fft_convolve(img, gaussian_response(ctx.res, (along_x - 1) / 2, (along_y - 1) / 2))
    u, v = _coords(ctx)
    sx = bc(m00 * kx) * u + (bc(m01 * ky) * v + bc(m00 * ox + m01 * oy + c0))
    sy = bc(m10 * kx) * u + (bc(m11 * ky) * v + bc(m10 * ox + m11 * oy + c1))
    return {"out": wrap_lookup(img, sx, sy).clamp(0, 1)}


# ---------------------------------------------------------------- height-derived maps

@node("normal_from_height", "filter", inputs={"height": "gray"}, outputs={"out": "color"}, params=[
    P("intensity", "float", 2.0, 0.0, 20.0, doc="height units per image width, times 100"),
])
def normal_from_height(ctx, inputs, p):
    """Tangent-space normal map (OpenGL convention, encoded (n+1)/2) from a height map."""
    h = inputs["height"]
    k = bc(p["intensity"]) * (ctx.res / 200.0)  # central differences span two pixels
    nx = (torch.roll(h, 1, -1) - torch.roll(h, -1, -1)) * k
    ny = (torch.roll(h, -1, -2) - torch.roll(h, 1, -2)) * k
    half_inv = torch.rsqrt(torch.addcmul(torch.addcmul(torch.ones_like(nx), nx, nx), ny, ny)) * 0.5
    return {"out": torch.cat([nx * half_inv, ny * half_inv, half_inv], 1) + 0.5}
