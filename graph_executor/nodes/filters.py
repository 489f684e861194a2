"""Filters: blending, tone and colour adjustments, spatial filters, and height-derived maps."""

from __future__ import annotations

import torch

from graph_executor.nodes._common import bc, gradients, normalize_channels
from graph_executor.schema import P, node

BLEND_MODES = ("copy", "add", "subtract", "multiply", "screen", "overlay", "darken", "lighten",
               "difference", "soft_light", "hard_light", "divide")


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
        return torch.where(b < 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "darken":
        return torch.minimum(a, b)
    if mode == "lighten":
        return torch.maximum(a, b)
    if mode == "difference":
        return (a - b).abs()
    if mode == "soft_light":
        return (1 - 2 * a) * b * b + 2 * a * b
    if mode == "hard_light":
        return torch.where(a < 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "divide":
        return b / a.clamp(min=1e-3)
    raise ValueError(mode)


def _blend(ctx, inputs, p):
    fg, bg, mask = inputs["foreground"], inputs["background"], inputs["mask"]
    channels = max(fg.shape[1], bg.shape[1])
    fg, bg = fg.expand(-1, channels, -1, -1), bg.expand(-1, channels, -1, -1)
    mixed = torch.empty_like(bg)
    modes = p["mode"]
    for index in torch.unique(modes).tolist():
        rows = modes == index
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


@node("levels", "filter", inputs={"in": "gray"}, params=[
    P("in_low", "float", 0.0, 0.0, 1.0), P("in_high", "float", 1.0, 0.0, 1.0),
    P("gamma", "float", 1.0, 0.2, 5.0),
    P("out_low", "float", 0.0, 0.0, 1.0), P("out_high", "float", 1.0, 0.0, 1.0),
])
def levels(ctx, inputs, p):
    """Remap input range [in_low,in_high] through a gamma to [out_low,out_high]."""
    lo, hi = bc(p["in_low"]), bc(p["in_high"])
    t = ((inputs["in"] - lo) / (hi - lo).abs().clamp(min=1e-3) * torch.sign(hi - lo + 1e-9)).clamp(0, 1)
    t = t ** (1.0 / bc(p["gamma"]))
    return {"out": torch.lerp(bc(p["out_low"]).expand_as(t), bc(p["out_high"]).expand_as(t), t)}


@node("normal_from_height", "filter", inputs={"height": "gray"}, outputs={"out": "color"}, params=[
    P("intensity", "float", 2.0, 0.0, 20.0, doc="height units per image width, times 100"),
])
def normal_from_height(ctx, inputs, p):
    """Tangent-space normal map (OpenGL convention, encoded (n+1)/2) from a height map."""
    dx, dy = gradients(inputs["height"])
    k = bc(p["intensity"]) * ctx.res / 100.0
    nx, ny, nz = -dx * k, dy * k, torch.ones_like(dx)
    return {"out": normalize_channels(torch.cat([nx, ny, nz], 1)) * 0.5 + 0.5}
