"""Filter nodes: range, determinism, batching, tiling, and behaviour that breaks if a filter breaks."""

from __future__ import annotations

import math
import random

import pytest
import torch

from graph_executor.executor import NodeContext, Plan
from graph_executor.ir import parse_graph
from graph_executor.nodes._common import gaussian_blur, luminance
from graph_executor.nodes.filters import BLEND_MODES
from graph_executor.schema import ParamKind, PortKind
from graph_executor.registry import load_node_library, node_type

RES = 64
B = 4
FILTERS = sorted(name for name, spec in load_node_library().items() if spec.category == "filter")
# Filters whose output at a pixel depends only on the neighbourhood of that pixel (not on its
# absolute position), so shifting the inputs around the torus must shift the output the same way.
NOT_SHIFT_EQUIVARIANT = {"transform_2d", "transform_2d_color"}


def noise(batch: int, channels: int, seed: int, res: int = RES) -> torch.Tensor:
    """Tileable smooth noise in [0,1]: circularly blurred white noise, stretched per sample."""
    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(torch.rand(batch, channels, res, res, generator=g), torch.full((batch,), 2.5))
    x = x - x.amin((1, 2, 3), keepdim=True)
    return x / x.amax((1, 2, 3), keepdim=True)


def random_value(spec, rng: random.Random):
    if spec.kind is ParamKind.FLOAT:
        return rng.uniform(spec.low, spec.high)
    if spec.kind is ParamKind.INT:
        return rng.randint(int(spec.low), int(spec.high))
    if spec.kind is ParamKind.ENUM:
        return rng.choice(spec.choices)
    if spec.kind is ParamKind.BOOL:
        return rng.random() < 0.5
    return [rng.uniform(spec.low, spec.high) for _ in range(spec.components)]


def stack_params(type_name: str, samples: list[dict]) -> dict[str, torch.Tensor]:
    """Per-sample parameter tensors for one node of `type_name`, through the real Plan.stack."""
    spec = node_type(type_name)
    nodes = {f"src_{port}": {"type": "perlin_fbm"} for port in spec.inputs}
    nodes["f"] = {"type": type_name, "inputs": {port: f"src_{port}" for port in spec.inputs}}
    nodes["out"] = {"type": "output", "inputs": {"basecolor": f"f.{next(iter(spec.outputs))}"}}
    plan = Plan(parse_graph({"nodes": nodes}))
    return plan.stack([{"f": s} for s in samples])["f"]


def random_samples(type_name: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{s.name: random_value(s, rng) for s in node_type(type_name).params} for _ in range(n)]


def make_inputs(type_name: str, batch: int, seed: int, res: int = RES) -> dict[str, torch.Tensor]:
    spec = node_type(type_name)
    return {port: noise(batch, 3 if kind is PortKind.COLOR else 1, seed + i, res)
            for i, (port, kind) in enumerate(spec.inputs.items())}


def run(type_name: str, inputs: dict, params: dict, res: int = RES) -> dict[str, torch.Tensor]:
    spec = node_type(type_name)
    batch = next(iter(inputs.values())).shape[0]
    ctx = NodeContext(res, batch, torch.device("cpu"), torch.zeros(batch, dtype=torch.long), {})
    full = {port: None for port in spec.optional_inputs}
    full.update(inputs)
    with torch.no_grad():
        return spec.fn(ctx, full, params)


def run_one(type_name: str, inputs: dict, res: int = RES, **values) -> torch.Tensor:
    """Run with the defaults except `values`; returns the (first) output."""
    batch = next(iter(inputs.values())).shape[0]
    out = run(type_name, inputs, stack_params(type_name, [values] * batch), res)
    return next(iter(out.values()))


def seam_ratio(img: torch.Tensor) -> float:
    """Mean jump across the wrap seams over the mean jump between neighbouring interior pixels."""
    seam = ((img[..., 0] - img[..., -1]).abs().mean() + (img[..., 0, :] - img[..., -1, :]).abs().mean()) / 2
    inner = ((img[..., 1:] - img[..., :-1]).abs().mean() + (img[..., 1:, :] - img[..., :-1, :]).abs().mean()) / 2
    return float(seam / inner.clamp(min=1e-6))


# ---------------------------------------------------------------- properties of every filter

def test_there_are_many_filters():
    assert len(FILTERS) >= 22
    for name in ("curve", "gradient_map", "hsl", "invert", "threshold", "histogram_scan", "clamp", "gamma",
                 "blur", "sharpen", "warp", "directional_warp", "transform_2d", "slope_blur", "emboss",
                 "edge_detect", "dilate_erode", "ambient_occlusion", "grayscale", "channel_split",
                 "channel_merge", "normal_from_height"):
        assert name in FILTERS


@pytest.mark.parametrize("name", FILTERS)
def test_finite_in_range_deterministic_and_typed(name):
    spec = node_type(name)
    params = stack_params(name, random_samples(name, B, seed=1))
    inputs = make_inputs(name, B, seed=10)
    first, second = run(name, inputs, params), run(name, inputs, params)
    assert set(first) == set(spec.outputs)
    for port, kind in spec.outputs.items():
        out = first[port]
        assert out.shape == (B, 3 if kind is PortKind.COLOR else 1, RES, RES), port
        assert torch.isfinite(out).all(), port
        assert out.min() >= 0 and out.max() <= 1, port
        assert torch.equal(out, second[port]), port


@pytest.mark.parametrize("name", FILTERS)
def test_batch_equals_single_runs_with_per_sample_params(name):
    samples = random_samples(name, B, seed=2)
    inputs = make_inputs(name, B, seed=20)
    batched = run(name, inputs, stack_params(name, samples))
    for i, sample in enumerate(samples):
        single = run(name, {k: v[i:i + 1] for k, v in inputs.items()}, stack_params(name, [sample]))
        for port in batched:
            assert torch.allclose(batched[port][i:i + 1], single[port], atol=1e-5), (port, i, sample)


@pytest.mark.parametrize("name", sorted(set(FILTERS) - NOT_SHIFT_EQUIVARIANT))
def test_wraps_around_shifting_inputs_shifts_output(name):
    """A filter that zero-pads or clamps at the border breaks this near the (shifted) seam."""
    params = stack_params(name, random_samples(name, B, seed=3))
    inputs = make_inputs(name, B, seed=30)
    shift = (RES // 3, RES // 5)
    out = run(name, inputs, params)
    shifted = run(name, {k: torch.roll(v, shift, (-2, -1)) for k, v in inputs.items()}, params)
    for port in out:
        assert torch.allclose(torch.roll(out[port], shift, (-2, -1)), shifted[port], atol=2e-4), port


@pytest.mark.parametrize("name", FILTERS)
def test_tileable_input_gives_tileable_output(name):
    params = stack_params(name, random_samples(name, B, seed=4))
    for port, out in run(name, make_inputs(name, B, seed=40), params).items():
        if out.std() > 1e-4 and not torch.equal(out, out.round()):
            assert seam_ratio(out) < 3, port


# ---------------------------------------------------------------- blending

def _blend_expected(mode: str, a: float, b: float) -> float:
    """Substance-style blend formulas, foreground a over background b, written out independently."""
    return {
        "copy": a, "add": a + b, "subtract": b - a, "multiply": a * b, "screen": 1 - (1 - a) * (1 - b),
        "overlay": 2 * a * b if b < 0.5 else 1 - 2 * (1 - a) * (1 - b),
        "darken": min(a, b), "lighten": max(a, b), "difference": abs(a - b),
        "soft_light": (1 - 2 * a) * b * b + 2 * a * b,
        "hard_light": 2 * a * b if a < 0.5 else 1 - 2 * (1 - a) * (1 - b),
        "divide": b / max(a, 1e-3),
    }[mode]


@pytest.mark.parametrize("a,b", [(0.3, 0.6), (0.8, 0.25), (0.6, 0.7)])
def test_each_blend_mode_matches_its_formula_on_constants(a, b):
    assert len(BLEND_MODES) >= 10
    fg = torch.full((len(BLEND_MODES), 1, 8, 8), a)
    bg = torch.full((len(BLEND_MODES), 1, 8, 8), b)
    params = stack_params("blend", [{"mode": m, "opacity": 1.0} for m in BLEND_MODES])
    out = run("blend", {"foreground": fg, "background": bg}, params, res=8)["out"]
    for i, mode in enumerate(BLEND_MODES):
        expected = min(max(_blend_expected(mode, a, b), 0.0), 1.0)
        assert out[i].sub(expected).abs().max() < 1e-5, mode


def test_blend_opacity_and_mask():
    fg, bg = torch.full((1, 3, 8, 8), 0.9), torch.full((1, 3, 8, 8), 0.1)
    half = run_one("blend_color", {"foreground": fg, "background": bg}, res=8, mode="copy", opacity=0.5)
    assert torch.allclose(half, torch.full_like(half, 0.5))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    params = stack_params("blend_color", [{"mode": "copy", "opacity": 1.0}])
    out = run("blend_color", {"foreground": fg, "background": bg, "mask": mask}, params, res=8)["out"]
    assert torch.allclose(out[..., :4], fg[..., :4]) and torch.allclose(out[..., 4:], bg[..., 4:])


# ---------------------------------------------------------------- tone and colour

def test_invert_twice_is_identity():
    x, c = noise(2, 1, 0), noise(2, 3, 1)
    assert torch.allclose(run_one("invert", {"in": run_one("invert", {"in": x})}), x, atol=1e-6)
    assert torch.allclose(run_one("invert_color", {"in": run_one("invert_color", {"in": c})}), c, atol=1e-6)
    assert torch.allclose(run_one("invert", {"in": x}), 1 - x)


def test_threshold_is_binary_and_splits_at_the_threshold():
    x = noise(2, 1, 0)
    out = run_one("threshold", {"in": x}, threshold=0.4)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out, (x >= 0.4).float())


def test_levels_remaps_and_inverts():
    x = noise(1, 1, 0)
    out = run_one("levels", {"in": x}, in_low=0.2, in_high=0.6)
    assert torch.allclose(out, ((x - 0.2) / 0.4).clamp(0, 1), atol=1e-5)
    inverted = run_one("levels", {"in": x}, in_low=1.0, in_high=0.0)
    assert torch.allclose(inverted, 1 - x, atol=1e-5)
    assert torch.allclose(run_one("levels", {"in": x}, gamma=2.0), x.sqrt(), atol=1e-5)


def test_curve_passes_through_its_control_values_and_defaults_to_identity():
    x = torch.linspace(0, 1, RES * RES).view(1, 1, RES, RES)
    assert torch.allclose(run_one("curve", {"in": x}), x, atol=1e-5)
    values = {"at_0": 0.1, "at_25": 0.2, "at_50": 0.8, "at_75": 0.85, "at_100": 0.9}
    knots = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]).view(1, 1, 1, 5)
    at_knots = run_one("curve", {"in": knots}, res=5, **values)
    assert torch.allclose(at_knots.flatten(), torch.tensor(list(values.values())), atol=1e-5)
    out = run_one("curve", {"in": x}, **values).flatten()
    assert (out[1:] >= out[:-1] - 1e-6).all(), "monotone control values give a monotone curve"
    assert out.min() >= 0.1 - 1e-6 and out.max() <= 0.9 + 1e-6, "no overshoot"


def test_gradient_map_hits_end_anchors_and_interpolates():
    x = torch.tensor([0.0, 1.0, 0.5, 0.25]).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    colors = {"color_0": [0.0, 0.0, 1.0], "color_1": [1.0, 0.0, 0.0], "color_2": [0.0, 1.0, 0.0],
              "color_3": [1.0, 1.0, 1.0]}
    # positions given out of order: anchors are sorted, so color_3 (pos 0) is the low end, color_0 the high end
    out = run_one("gradient_map", {"in": x}, res=4, position_0=1.0, position_1=0.5, position_2=0.75,
                  position_3=0.0, **colors)[0, :, 0]
    assert torch.allclose(out[:, 0], torch.tensor([1.0, 1.0, 1.0]), atol=1e-5)
    assert torch.allclose(out[:, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    assert torch.allclose(out[:, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(out[:, 3], torch.tensor([1.0, 0.5, 0.5]), atol=1e-5)  # halfway white -> red


def test_hsl_zero_is_identity_and_shifts_behave():
    c = noise(2, 3, 0)
    assert torch.allclose(run_one("hsl", {"in": c}), c, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    green = run_one("hsl", {"in": red}, res=4, hue=1 / 3)
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    gray = run_one("hsl", {"in": c}, saturation=-1.0)
    assert (gray.amax(1) - gray.amin(1)).max() < 1e-5
    assert torch.allclose(run_one("hsl", {"in": c}, lightness=1.0), torch.ones_like(c), atol=1e-5)
    assert torch.allclose(run_one("hsl", {"in": c}, lightness=-1.0), torch.zeros_like(c), atol=1e-5)
    assert torch.allclose(run_one("hsl", {"in": run_one("hsl", {"in": c}, hue=0.5)}, hue=-0.5), c, atol=1e-4)


def test_histogram_scan_and_range():
    x = noise(1, 1, 0)
    assert torch.allclose(run_one("histogram_scan", {"in": x}, position=0.5, contrast=0.0), x, atol=1e-5)
    assert run_one("histogram_scan", {"in": x}, position=0.0, contrast=0.5).max() == 0
    assert run_one("histogram_scan", {"in": x.clamp(min=1e-3)}, position=1.0, contrast=0.5).min() == 1
    hard = run_one("histogram_scan", {"in": x}, position=0.5, contrast=1.0)
    assert ((hard - (x >= 0.5).float()).abs() > 1e-3).float().mean() < 0.01
    assert torch.allclose(run_one("histogram_range", {"in": x}, range=1.0, position=0.5), x, atol=1e-6)
    squeezed = run_one("histogram_range", {"in": x}, range=0.2, position=0.3)
    assert squeezed.min() >= 0.2 - 1e-6 and squeezed.max() <= 0.4 + 1e-6


def test_clamp_gamma_grayscale_tint():
    x, c = noise(1, 1, 0), noise(1, 3, 1)
    assert torch.equal(run_one("clamp", {"in": x}, low=0.3, high=0.6), x.clamp(0.3, 0.6))
    assert torch.allclose(run_one("gamma", {"in": x}, gamma=2.0), x * x, atol=1e-6)
    assert torch.allclose(run_one("gamma", {"in": x}, gamma=1.0), x, atol=1e-6)
    assert torch.allclose(run_one("grayscale", {"in": c}, weights=[1.0, 0.0, 0.0]), c[:, :1], atol=1e-6)
    assert torch.allclose(run_one("grayscale", {"in": c}), luminance(c), atol=1e-5)
    assert torch.allclose(run_one("tint", {"in": c}), c)
    assert torch.allclose(run_one("tint", {"in": x}, color=[1.0, 0.5, 0.0]),
                          x * torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1))


def test_channel_split_then_merge_round_trips():
    c = noise(2, 3, 0)
    parts = run("channel_split", {"in": c}, {})
    assert torch.equal(parts["g"], c[:, 1:2])
    assert torch.equal(run("channel_merge", parts, {})["out"], c)


# ---------------------------------------------------------------- blurs and convolutions

def test_blur_reduces_variance_and_preserves_mean():
    x, c = noise(2, 1, 0), noise(2, 3, 1)
    for name, img in (("blur", x), ("blur_color", c)):
        out = run_one(name, {"in": img}, sigma=16.0)
        assert torch.allclose(out.mean((2, 3)), img.mean((2, 3)), atol=1e-4)
        assert (out.var((2, 3)) < 0.7 * img.var((2, 3))).all()
        assert torch.allclose(run_one(name, {"in": img}, sigma=0.0), img, atol=1e-5)


def test_blur_scales_with_resolution():
    """Sigma is in pixels at 256², so an image and its 2x upsampling blur alike."""
    small = noise(1, 1, 0, res=64)
    big = torch.nn.functional.interpolate(small, scale_factor=2, mode="nearest")
    a = run_one("blur", {"in": small}, res=64, sigma=16.0)
    b = run_one("blur", {"in": big}, res=128, sigma=16.0)
    assert torch.allclose(torch.nn.functional.avg_pool2d(b, 2), a, atol=2e-3)


def test_sharpen_increases_contrast_and_zero_is_identity():
    x = noise(2, 1, 0)
    assert torch.allclose(run_one("sharpen", {"in": x}, intensity=0.0), x, atol=1e-5)
    sharp = run_one("sharpen", {"in": x}, intensity=2.0, radius=2.0)
    assert (sharp.var((2, 3)) > x.var((2, 3))).all()


def test_directional_blur_blurs_only_along_its_direction():
    y = torch.linspace(0, 2 * math.pi, RES + 1)[:-1]
    rows = (0.5 + 0.5 * torch.sin(4 * y)).view(1, 1, RES, 1).expand(1, 1, RES, RES).contiguous()
    # varies along y only: a horizontal blur leaves it alone, a vertical one flattens it
    assert torch.allclose(run_one("directional_blur", {"in": rows}, angle=0.0, sigma=8.0), rows, atol=1e-4)
    vertical = run_one("directional_blur", {"in": rows}, angle=90.0, sigma=32.0)
    assert vertical.var() < 0.5 * rows.var()


def test_non_uniform_blur_follows_the_amount_map():
    x = noise(1, 1, 0)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    assert torch.allclose(run_one("non_uniform_blur", {"in": x, "amount": zero}, sigma=8.0), x, atol=1e-5)
    assert torch.allclose(run_one("non_uniform_blur", {"in": x, "amount": one}, sigma=8.0),
                          run_one("blur", {"in": x}, sigma=8.0), atol=1e-5)


def test_edge_detect_marks_edges_of_a_binary_image():
    stripes = torch.zeros(1, 1, RES, RES)
    stripes[..., RES // 4: 3 * RES // 4] = 1
    for width in (0.5, 2.0, 8.0):  # 1/8 px to 2 px at 64²: a unit step peaks at the intensity at every width
        edges = run_one("edge_detect", {"in": stripes}, width=width, intensity=0.8)
        assert torch.allclose(edges.amax(-1), torch.full((1, 1, RES), 0.8), atol=1e-4), width
        assert edges[..., RES // 2].max() < 0.05 and edges[..., 0].max() < 0.05
    assert run_one("edge_detect", {"in": torch.full_like(stripes, 0.3)}).max() < 1e-5


def test_emboss_lights_slopes_facing_the_light():
    ramp = torch.linspace(0, 1, RES).view(1, 1, 1, RES).expand(1, 1, RES, RES)
    base = torch.full_like(ramp, 0.5)
    # the surface rises to the right, so it faces left: lit from the left (180 degrees), in shadow from the right
    toward = run_one("emboss", {"in": base, "height": ramp}, angle=180.0, intensity=1.0)
    away = run_one("emboss", {"in": base, "height": ramp}, angle=0.0, intensity=1.0)
    mid = (..., slice(8, -8), slice(8, -8))
    assert (away[mid] < 0.5).all() and (toward[mid] > 0.5).all()
    assert torch.allclose(run_one("emboss", {"in": base}), base)


def test_dilate_erode():
    x = noise(2, 1, 0)
    dilated = run_one("dilate_erode", {"in": x}, mode="dilate", radius=4.0)
    eroded = run_one("dilate_erode", {"in": x}, mode="erode", radius=4.0)
    assert (dilated >= x).all() and (eroded <= x).all()
    assert torch.equal(run_one("dilate_erode", {"in": x}, radius=0.0), x)
    dot = torch.zeros(1, 1, RES, RES)
    dot[..., 0, 0] = 1  # at the corner: the disc must wrap to the other three corners
    # 32 px at 256² is 8 px at 64²: a rounded disc of radius 8 covers about pi * 8.5^2 pixels
    disc = run_one("dilate_erode", {"in": dot}, mode="dilate", radius=32.0)
    assert 0.85 * math.pi * 8.5 ** 2 < disc.sum() < 1.15 * math.pi * 8.5 ** 2
    assert disc[..., -8, 0] == 1 and disc[..., 0, -8] == 1 and disc[..., -7, -7] == 0


def test_ambient_occlusion_darkens_pits_only():
    height = torch.full((1, 1, RES, RES), 0.8)
    height[..., 28:36, 28:36] = 0.2
    ao = run_one("ambient_occlusion", {"height": height}, radius=32.0, intensity=4.0)
    assert ao[..., 32, 32] < 0.5
    assert ao[..., 2, 2] > 0.99
    assert torch.allclose(run_one("ambient_occlusion", {"height": torch.full_like(height, 0.4)}),
                          torch.ones_like(height), atol=1e-5)


def test_normal_from_height():
    flat = run_one("normal_from_height", {"height": torch.full((1, 1, 8, 8), 0.3)}, res=8)
    assert torch.allclose(flat[0, :, 0, 0], torch.tensor([0.5, 0.5, 1.0]))
    n = run_one("normal_from_height", {"height": noise(1, 1, 0)}) * 2 - 1
    assert torch.allclose((n * n).sum(1), torch.ones(1, RES, RES), atol=1e-5)


# ---------------------------------------------------------------- warps and transforms

def test_warp_by_a_flat_map_or_zero_intensity_is_identity():
    x, m = noise(1, 1, 0), noise(1, 1, 1)
    for name, img in (("warp", x), ("warp_color", noise(1, 3, 2))):
        assert torch.allclose(run_one(name, {"in": img, "warp": torch.full_like(m, 0.7)}, intensity=10.0),
                              img, atol=1e-5)
        assert torch.allclose(run_one(name, {"in": img, "warp": m}, intensity=0.0), img, atol=1e-5)
    assert not torch.allclose(run_one("warp", {"in": x, "warp": m}, intensity=10.0), x, atol=1e-2)


def test_directional_warp_shifts_by_intensity_along_angle():
    x = noise(1, 1, 0)
    ones = torch.ones_like(x)
    right = run_one("directional_warp", {"in": x, "warp": ones}, intensity=0.25, angle=0.0)
    assert torch.allclose(right, torch.roll(x, -RES // 4, -1), atol=1e-5)
    up = run_one("directional_warp", {"in": x, "warp": ones}, intensity=0.125, angle=90.0)
    assert torch.allclose(up, torch.roll(x, RES // 8, -2), atol=1e-4)


def test_slope_blur_modes_and_identities():
    x, s = noise(1, 1, 0), noise(1, 1, 1)
    assert torch.allclose(run_one("slope_blur", {"in": x, "slope": s}, intensity=0.0), x, atol=1e-5)
    assert torch.allclose(run_one("slope_blur", {"in": x, "slope": torch.full_like(s, 0.5)}, intensity=10.0),
                          x, atol=1e-5)
    outs = {m: run_one("slope_blur", {"in": x, "slope": s}, intensity=10.0, mode=m) for m in ("blur", "min", "max")}
    assert (outs["min"] <= outs["blur"] + 1e-5).all() and (outs["blur"] <= outs["max"] + 1e-5).all()
    assert (outs["min"] <= x + 1e-5).all() and (outs["max"] >= x - 1e-5).all()
    assert outs["blur"].var() < x.var()


def test_transform_identity_full_tile_offsets_and_rotations():
    x = noise(2, 1, 0)
    assert torch.allclose(run_one("transform_2d", {"in": x}), x, atol=1e-5)
    assert torch.allclose(run_one("transform_2d", {"in": x}, offset_x=1.0, offset_y=1.0), x, atol=1e-5)
    assert torch.allclose(run_one("transform_2d", {"in": x}, offset_x=0.25), torch.roll(x, -RES // 4, -1), atol=1e-5)
    for k, name in enumerate(("0", "90", "180", "270")):
        assert torch.allclose(run_one("transform_2d", {"in": x}, rotation=name), torch.rot90(x, k, (-2, -1)),
                              atol=1e-5), name
    c = noise(1, 3, 1)
    assert torch.allclose(run_one("transform_2d_color", {"in": c}, rotation="90"), torch.rot90(c, 1, (-2, -1)),
                          atol=1e-5)


def test_transform_tiles_an_integer_number_of_times():
    x = noise(1, 1, 0)
    out = run_one("transform_2d", {"in": x}, tile_x=2, tile_y=4)
    half, quarter = RES // 2, RES // 4
    assert torch.allclose(out[..., :half], out[..., half:], atol=1e-5)
    assert torch.allclose(out[..., :quarter, :], out[..., quarter:2 * quarter, :], atol=1e-5)
    # one tile is the input shrunk (area-filtered) into it: compare with average pooling
    pooled = torch.nn.functional.avg_pool2d(x, (4, 2))
    assert (out[..., :quarter, :half] - pooled).abs().mean() < 0.02


# ---------------------------------------------------------------- inside a graph

def _filter_chain_graph():
    return parse_graph({"nodes": {
        "h": {"type": "perlin_fbm", "params": {"scale": 4}},
        "m": {"type": "perlin_fbm", "params": {"scale": 2, "seed": 7}},
        "warped": {"type": "warp", "inputs": {"in": "h", "warp": "m"}},
        "tiled": {"type": "transform_2d", "params": {"tile_x": 2}, "inputs": {"in": "warped"}},
        "soft": {"type": "blur", "inputs": {"in": "tiled"}},
        "slopes": {"type": "slope_blur", "inputs": {"in": "soft", "slope": "m"}},
        "spots": {"type": "dilate_erode", "inputs": {"in": "slopes"}},
        "tone": {"type": "curve", "inputs": {"in": "spots"}},
        "albedo": {"type": "gradient_map", "inputs": {"in": "tone"}},
        "shifted": {"type": "hsl", "params": {"hue": 0.1}, "inputs": {"in": "albedo"}},
        "split": {"type": "channel_split", "inputs": {"in": "shifted"}},
        "rough": {"type": "histogram_scan", "inputs": {"in": "split.r"}},
        "ao": {"type": "ambient_occlusion", "inputs": {"height": "tone"}},
        "normal": {"type": "normal_from_height", "inputs": {"height": "tone"}},
        "out": {"type": "output", "inputs": {"basecolor": "shifted", "roughness": "rough", "metallic": "ao",
                                              "normal": "normal", "height": "tone"}},
    }})


def test_filter_chain_batch_equals_single_runs_through_the_executor():
    plan = Plan(_filter_chain_graph())
    overrides = [
        {"tiled": {"tile_x": 3, "rotation": "90"}, "spots": {"mode": "erode", "radius": 8.0},
         "slopes": {"mode": "max"}, "shifted": {"saturation": -0.5}},
        {"tiled": {"tile_y": 2, "rotation": "180"}, "spots": {"radius": 2.0}, "warped": {"intensity": 4.0}},
        {},
    ]
    seeds = [3, 4, 5]
    batch = plan.run(plan.stack(overrides), res=RES, seed=seeds)
    for i, (o, s) in enumerate(zip(overrides, seeds)):
        single = plan.run(plan.stack([o]), res=RES, seed=s)
        for name, value in single.items():
            assert torch.allclose(getattr(batch, name)[i:i + 1], value, atol=1e-5), (name, i)
    for name, value in batch.items():
        assert torch.isfinite(value).all() and value.min() >= 0 and value.max() <= 1, name
        assert seam_ratio(value) < 3, name


def test_bad_filter_parameters_raise_a_graph_error_naming_them():
    from graph_executor.errors import GraphError

    plan = Plan(_filter_chain_graph())
    with pytest.raises(GraphError, match="'tiled'.*'rotation'"):
        plan.stack([{"tiled": {"rotation": "45"}}])
    with pytest.raises(GraphError, match="'spots'.*'radius'"):
        plan.stack([{"spots": {"radius": float("nan")}}])
    with pytest.raises(GraphError, match="'tiled'.*'tile_x'"):
        plan.stack([{"tiled": {"tile_x": 2.5}}])


# ---------------------------------------------------------------- helpers against slow references

def _bilinear_wrap_reference(img, x, y):
    """Per-pixel gather of the four wrapped neighbours: slow, obviously right."""
    B, C, H, W = img.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = px - x0, py - y0
    x0, y0 = x0.long() % W, y0.long() % H
    x1, y1 = (x0 + 1) % W, (y0 + 1) % H
    flat = img.reshape(B, C, H * W)

    def at(yy, xx):
        return flat.gather(2, (yy * W + xx).reshape(B, 1, -1).expand(B, C, -1)).view(B, C, *x.shape[-2:])

    return torch.lerp(torch.lerp(at(y0, x0), at(y0, x1), fx), torch.lerp(at(y1, x0), at(y1, x1), fx), fy)


def test_wrap_lookup_matches_the_gather_reference_anywhere_on_the_plane():
    from graph_executor.nodes._filters_util import wrap_lookup

    img = torch.rand(2, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 16, 16, generator=g) * 6 - 3, torch.rand(2, 1, 16, 16, generator=g) * 6 - 3
    assert torch.allclose(wrap_lookup(img, x, y), _bilinear_wrap_reference(img, x, y), atol=1e-5)


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 7])
def test_window_max_matches_brute_force(radius):
    from graph_executor.nodes._filters_util import window_max

    x = torch.rand(2, 1, 4, 20)
    brute = torch.stack([torch.roll(x, s, -1) for s in range(-radius, radius + 1)]).amax(0)
    assert torch.equal(window_max(x, radius, -1), brute)


def test_rgb_to_hsl_matches_colorsys():
    import colorsys

    from graph_executor.nodes._filters_util import hsl_to_rgb, rgb_to_hsl

    rgb = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    hue, sat, light = rgb_to_hsl(rgb)
    for (r, g, b), h6, s, l in zip(rgb[0].flatten(1).T.tolist(), hue.flatten().tolist(), sat.flatten().tolist(),
                                   light.flatten().tolist()):
        ref_h, ref_l, ref_s = colorsys.rgb_to_hls(r, g, b)
        assert min(abs(ref_h * 6 - h6), 6 - abs(ref_h * 6 - h6)) < 1e-4
        assert abs(ref_s - s) < 1e-5 and abs(ref_l - l) < 1e-5
    assert torch.allclose(hsl_to_rgb(hue, sat, light), rgb, atol=1e-5)


def test_chunked_node_equals_single_runs_at_full_resolution():
    """hsl runs in chunks of one 256² sample; the chunks must keep each sample's own parameters."""
    samples = random_samples("hsl", 3, seed=5)
    inputs = make_inputs("hsl", 3, seed=50, res=256)
    batched = run("hsl", inputs, stack_params("hsl", samples), res=256)["out"]
    for i, sample in enumerate(samples):
        single = run("hsl", {"in": inputs["in"][i:i + 1]}, stack_params("hsl", [sample]), res=256)["out"]
        assert torch.allclose(batched[i:i + 1], single, atol=1e-6)


def test_curve_stays_finite_for_non_monotone_control_values():
    """Regression: secants of opposite sign summing to -1 made the harmonic-mean slope 0/0."""
    from tests.node_harness import run_node

    out = run_node("curve", [dict(at_0=0.746, at_25=0.293, at_50=0.496, at_75=0.605, at_100=0.902)], [1])
    assert torch.isfinite(out["out"]).all() and out["out"].min() >= 0 and out["out"].max() <= 1
