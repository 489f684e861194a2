"""Material recipes for the bundled graph library (see tools/build_library.py).

Each recipe returns a GraphBuilder. Shared layers (colour variation, grime, the finishing chain of
normal, ambient occlusion and output) keep the recipes short and the structures realistic.
"""

from __future__ import annotations

from functools import partial

from build_library import GraphBuilder, Ref


# ----------------------------------------------------------------------------- shared layers

def color(g: GraphBuilder, rgb) -> Ref:
    return g.uniform_color(color=[float(c) for c in rgb])


def palette(g: GraphBuilder, source: str, colors, positions=(0.0, 0.33, 0.66, 1.0)) -> Ref:
    """Gradient map of `source` through four anchor colours."""
    params = {}
    for i, (c, p) in enumerate(zip(colors, positions)):
        params[f"color_{i}"] = [float(v) for v in c]
        params[f"position_{i}"] = float(p)
    return g.gradient_map(source, **params)


def mottle(g: GraphBuilder, base: str, scale=8, lightness=-0.15, hue=0.0, saturation=0.0, opacity=0.6,
           octaves=5, seed=11) -> Ref:
    """Low-frequency colour variation: an HSL-shifted copy blended in through a noise mask."""
    mask = g.value_fbm(scale=scale, octaves=octaves, seed=seed)
    shifted = g.hsl(base, hue=hue, saturation=saturation, lightness=lightness)
    return g.blend_color(shifted, base, mask=mask, mode="copy", opacity=opacity)


def grime(g: GraphBuilder, base: str, cavity: str, rgb=(0.12, 0.1, 0.08), amount=0.5, scale=6, seed=21) -> Ref:
    """Dirt collecting in cavities, broken up by clouds."""
    clouds = g.clouds(scale=scale, cover=0.55, softness=0.8, seed=seed)
    mask = g.blend(clouds, cavity, mode="multiply", opacity=1.0)
    return g.blend_color(color(g, rgb), base, mask=mask, mode="multiply", opacity=amount)


def finish(g: GraphBuilder, height: str, albedo: str, roughness: str, metallic: str | None = None,
           normal=3.0, ao_radius=12.0, ao_intensity=4.0, ao_amount=0.6) -> None:
    """Normal from height, ambient occlusion multiplied into the albedo, output."""
    nrm = g.normal_from_height(height, intensity=normal)
    occlusion = g.ambient_occlusion(height, radius=ao_radius, intensity=ao_intensity)
    shaded = g.blend_color(occlusion, albedo, mode="multiply", opacity=ao_amount)
    maps = {"basecolor": shaded, "normal": nrm, "roughness": roughness, "height": height}
    if metallic is not None:
        maps["metallic"] = metallic
    g.output(name="output", **maps)


# ----------------------------------------------------------------------------- bricks

def bricks(name, brick_colors, mortar_rgb, rows=12, columns=4, offset=0.5, gap=0.1, worn=0.3,
           moss=False, paint=None, description="") -> GraphBuilder:
    g = GraphBuilder(name, "bricks", description)
    layout = g.bricks(rows=rows, columns=columns, offset=offset, row_jitter=0.05, gap=gap, bevel=0.3,
                      roundness=0.1, height_jitter=0.15, seed=3)
    edge_noise = g.perlin_fbm(scale=16, octaves=5, persistence=0.5, seed=5)
    ragged = g.warp(layout.p("height"), edge_noise, intensity=0.04 + 0.12 * worn)
    surface = g.perlin_fbm(scale=8, octaves=6, persistence=0.55, seed=7)
    pits = g.scatter_shapes(count=20, shape="dome", size=0.3, density=0.35, value_jitter=0.5, seed=8)
    pitted = g.blend(pits, surface, mode="subtract", opacity=0.3 * worn + 0.1)
    brick_height = g.blend(g.levels(pitted, out_low=0.7, out_high=1.0), ragged, mode="multiply")
    mortar = g.levels(g.value_fbm(scale=32, octaves=4, seed=9), out_low=0.05, out_high=0.2)
    height = g.levels(g.blend(brick_height, mortar, mode="lighten"), name="height")
    mask = g.levels(ragged, in_low=0.02, in_high=0.1)

    per_brick = g.blend(layout.p("random"), surface, mode="overlay", opacity=0.4)
    brick_color = palette(g, per_brick, brick_colors)
    brick_color = mottle(g, brick_color, scale=10, lightness=-0.15, opacity=0.5)
    mortar_color = mottle(g, color(g, mortar_rgb), scale=20, lightness=-0.1, opacity=0.6, seed=12)
    albedo = g.blend_color(brick_color, mortar_color, mask=mask, mode="copy")
    if paint is not None:
        flakes = g.histogram_scan(g.clouds(scale=5, cover=0.6, softness=0.3, seed=30), position=0.45, contrast=0.8)
        paint_mask = g.blend(flakes, mask, mode="lighten", opacity=0.7)
        albedo = g.blend_color(color(g, paint), albedo, mask=paint_mask, mode="copy", opacity=0.9)
    cavity = g.invert(height)
    albedo = grime(g, albedo, cavity, amount=0.2 + 0.3 * worn)
    if moss:
        moss_mask = g.blend(g.clouds(scale=4, cover=0.35, softness=0.5, seed=40), cavity, mode="multiply")
        moss_color = mottle(g, color(g, (0.22, 0.28, 0.08)), scale=24, lightness=-0.3, seed=41)
        albedo = g.blend_color(moss_color, albedo, mask=moss_mask, mode="copy", opacity=0.9)
    rough = g.levels(surface, out_low=0.7, out_high=0.92)
    rough = g.blend(g.uniform_gray(value=0.95), rough, mask=g.invert(mask), mode="copy")
    finish(g, height, albedo, rough, normal=1.5, ao_radius=10.0, ao_intensity=3.0, ao_amount=0.4)
    return g


# ----------------------------------------------------------------------------- wood

def planks(name, wood_colors, rows=6, columns=2, rings=14, gloss=0.35, worn=0.2, description="") -> GraphBuilder:
    g = GraphBuilder(name, "wood", description)
    layout = g.bricks(rows=rows, columns=columns, offset=0.37, row_jitter=0.6, gap=0.012, bevel=0.04,
                      roundness=0.0, height_jitter=0.1, seed=2)
    rings_a = g.wood_rings(rings=rings, distortion=0.45, distortion_scale=3, ring_sharpness=2.5, grain=0.35, seed=4)
    rings_b = g.wood_rings(rings=rings + 5, distortion=0.6, distortion_scale=4, ring_sharpness=2.0, grain=0.4,
                           seed=9)
    grain = g.blend(rings_b, rings_a, mask=g.threshold(layout.p("random"), threshold=0.5), mode="copy")
    fibres = g.anisotropic_noise(scale=3, stretch=40, octaves=4, persistence=0.6, seed=6)
    wood = g.blend(fibres, grain, mode="overlay", opacity=0.45)
    tone = g.blend(layout.p("random"), wood, mode="soft_light", opacity=0.6)
    wood_color = palette(g, tone, wood_colors, (0.0, 0.4, 0.7, 1.0))
    wood_color = mottle(g, wood_color, scale=6, lightness=-0.12, saturation=0.1, opacity=0.5)
    seams = g.levels(layout.p("height"), in_low=0.0, in_high=0.15)
    height = g.blend(g.levels(wood, out_low=0.0, out_high=0.15), seams, mode="multiply", opacity=0.6)
    height = g.levels(height, name="height")
    wear = g.levels(g.perlin_fbm(scale=5, octaves=5, seed=13), in_low=0.4, in_high=0.8)
    albedo = g.blend_color(g.hsl(wood_color, lightness=0.12, saturation=-0.2), wood_color, mask=wear,
                           mode="copy", opacity=worn)
    albedo = grime(g, albedo, g.invert(seams), rgb=(0.08, 0.05, 0.03), amount=0.6)
    rough = g.levels(g.blend(wear, fibres, mode="screen", opacity=0.5), out_low=gloss, out_high=gloss + 0.3)
    finish(g, height, albedo, rough, normal=2.5, ao_radius=6.0, ao_intensity=3.0, ao_amount=0.5)
    return g


# ----------------------------------------------------------------------------- marble

def marble(name, base_colors, vein_colors, direction=(1, 2), turbulence=0.5, network=0.5, gloss=0.08,
           description="") -> GraphBuilder:
    g = GraphBuilder(name, "marble", description)
    ramp = g.linear_gradient(kx=direction[0], ky=direction[1], mode="triangle")
    flow = g.perlin_fbm(scale=3, octaves=5, persistence=0.55, contrast=2.5, seed=3)
    wavy = g.directional_warp(ramp, flow, intensity=turbulence, angle=20.0)
    main_veins = g.levels(wavy, in_low=0.88, in_high=1.0, gamma=0.6)
    cracks = g.ridged_fbm(scale=3, octaves=5, persistence=0.5, sharpness=4.0, seed=5)
    drift = g.perlin_fbm(scale=2, octaves=2, seed=6)
    cracks = g.levels(g.warp(cracks, drift, intensity=3.0), in_low=0.35, in_high=0.95, gamma=0.6)
    veins = g.blend(cracks, main_veins, mode="lighten", opacity=network)
    clouds = g.value_fbm(scale=4, octaves=6, persistence=0.6, seed=10)
    base = palette(g, clouds, base_colors, (0.0, 0.4, 0.7, 1.0))
    base = mottle(g, base, scale=12, lightness=-0.06, opacity=0.5)
    vein_color = palette(g, g.blur(flow, sigma=2.0), vein_colors, (0.0, 0.4, 0.7, 1.0))
    albedo = g.blend_color(vein_color, base, mask=veins, mode="copy", opacity=0.9)
    specks = g.scatter_shapes(count=32, shape="gaussian", size=0.2, density=0.4, value_jitter=0.6, seed=14)
    albedo = g.blend_color(g.hsl(albedo, lightness=-0.15), albedo, mask=specks, mode="copy", opacity=0.3)
    height = g.levels(g.blend(g.invert(veins), clouds, mode="multiply", opacity=0.2), out_low=0.45,
                      out_high=0.55, name="height")
    polish = g.perlin_fbm(scale=6, octaves=4, seed=16)
    rough = g.levels(g.blend(veins, polish, mode="screen", opacity=0.3), out_low=gloss, out_high=gloss + 0.15)
    finish(g, height, albedo, rough, normal=1.0, ao_radius=4.0, ao_intensity=1.0, ao_amount=0.2)
    return g


# ----------------------------------------------------------------------------- rusty metal

def rusty(name, paint_rgb=None, rust=0.55, description="") -> GraphBuilder:
    g = GraphBuilder(name, "rusty_metal", description)
    metal_grain = g.anisotropic_noise(scale=2, stretch=32, octaves=4, persistence=0.5, seed=3)
    rust_shape = g.clouds(scale=4, octaves=7, cover=rust, softness=0.45, seed=5)
    pores = g.perlin_fbm(scale=32, octaves=4, persistence=0.6, contrast=1.5, seed=6)
    rust_mask = g.blend(pores, rust_shape, mode="overlay", opacity=0.6)
    rust_mask = g.histogram_scan(rust_mask, position=0.5, contrast=0.6)
    rust_crust = g.perlin_fbm(scale=16, octaves=6, persistence=0.65, seed=7)
    rust_colors = [(0.16, 0.07, 0.03), (0.35, 0.14, 0.05), (0.55, 0.27, 0.1), (0.7, 0.42, 0.2)]
    rust_albedo = palette(g, g.blend(rust_crust, pores, mode="multiply", opacity=0.4), rust_colors)
    metal_albedo = palette(g, metal_grain, [(0.3, 0.3, 0.31), (0.45, 0.45, 0.46), (0.55, 0.55, 0.56),
                                            (0.65, 0.65, 0.66)])
    metal_mask = g.uniform_gray(value=1.0)
    if paint_rgb is not None:
        chips = g.histogram_scan(g.clouds(scale=6, cover=0.65, softness=0.3, seed=9), position=0.55, contrast=0.9)
        paint = mottle(g, color(g, paint_rgb), scale=8, lightness=-0.1, opacity=0.5)
        metal_albedo = g.blend_color(paint, metal_albedo, mask=chips, mode="copy")
        metal_mask = g.invert(chips)
    albedo = g.blend_color(rust_albedo, metal_albedo, mask=rust_mask, mode="copy")
    albedo = mottle(g, albedo, scale=5, lightness=-0.15, hue=0.02, opacity=0.4, seed=19)
    height = g.blend(g.levels(rust_crust, out_low=0.3, out_high=0.8), g.uniform_gray(value=0.2), mask=rust_mask,
                     mode="copy")
    height = g.levels(g.blur(height, sigma=0.7), name="height")
    metallic = g.blend(g.uniform_gray(value=0.0), metal_mask, mask=rust_mask, mode="copy")
    rough = g.blend(g.levels(rust_crust, out_low=0.75, out_high=0.95),
                    g.levels(metal_grain, out_low=0.3, out_high=0.45), mask=rust_mask, mode="copy")
    finish(g, height, albedo, rough, metallic=metallic, normal=3.0, ao_radius=8.0, ao_intensity=3.0)
    return g


RECIPES = [
    partial(bricks, "red_bricks", [(0.3, 0.1, 0.06), (0.45, 0.17, 0.09), (0.55, 0.25, 0.14), (0.62, 0.35, 0.22)],
            (0.55, 0.52, 0.47), description="Red clay bricks in running bond with grey mortar"),
    partial(planks, "oak_planks", [(0.25, 0.14, 0.07), (0.45, 0.28, 0.14), (0.58, 0.4, 0.22), (0.68, 0.5, 0.3)],
            description="Oak floor planks, staggered, satin finish"),
    partial(marble, "white_marble", [(0.78, 0.77, 0.75), (0.85, 0.84, 0.82), (0.9, 0.89, 0.87), (0.95, 0.94, 0.93)],
            [(0.2, 0.2, 0.22), (0.35, 0.35, 0.38), (0.55, 0.55, 0.57), (0.75, 0.75, 0.76)],
            description="Polished white Carrara marble with grey veins"),
    partial(rusty, "rusty_iron", description="Corroded bare iron sheet, rust patches over grey metal"),
]
