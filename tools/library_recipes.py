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

def planks(name, wood_colors, rows=6, columns=2, rings=30, gloss=0.35, worn=0.2, description="") -> GraphBuilder:
    g = GraphBuilder(name, "wood", description)
    layout = g.bricks(rows=rows, columns=columns, offset=0.37, row_jitter=0.6, gap=0.012, bevel=0.04,
                      roundness=0.0, height_jitter=0.1, seed=2)
    rings_a = g.wood_rings(rings=rings, distortion=0.3, distortion_scale=3, ring_sharpness=3.0, grain=0.5, seed=4)
    rings_b = g.wood_rings(rings=rings + 8, distortion=0.4, distortion_scale=4, ring_sharpness=2.5, grain=0.5,
                           seed=9)
    grain = g.blend(rings_b, rings_a, mask=g.threshold(layout.p("random"), threshold=0.5), mode="copy")
    fibres = g.anisotropic_noise(scale=3, stretch=40, octaves=4, persistence=0.6, seed=6)
    wood = g.blend(fibres, grain, mode="overlay", opacity=0.45)
    tone = g.blend(layout.p("random"), wood, mode="soft_light", opacity=0.6)
    wood_color = palette(g, tone, wood_colors, (0.0, 0.4, 0.7, 1.0))
    wood_color = mottle(g, wood_color, scale=6, lightness=-0.12, saturation=0.1, opacity=0.5)
    wood_color = g.sharpen_color(wood_color, intensity=0.6, radius=1.0)
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
    veins = g.gamma(g.blend(cracks, main_veins, mode="lighten", opacity=network), gamma=0.9)
    clouds = g.value_fbm(scale=4, octaves=6, persistence=0.6, seed=10)
    base = palette(g, clouds, base_colors, (0.0, 0.4, 0.7, 1.0))
    base = g.warp_color(mottle(g, base, scale=12, lightness=-0.06, opacity=0.5), flow, intensity=2.0)
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
    rgb = g.channel_split(rust_albedo)
    redder = g.blend(g.levels(rust_crust, out_low=0.0, out_high=0.15), rgb.p("r"), mode="add")
    rust_albedo = g.channel_merge(redder, rgb.p("g"), rgb.p("b"))
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


# ----------------------------------------------------------------------------- more wood

def parquet(name, wood_colors, tiles=4, strips=4, description="") -> GraphBuilder:
    """Basket-weave parquet: square blocks of strips, grain turning 90 degrees block to block."""
    g = GraphBuilder(name, "wood", description)
    blocks = g.square_tiles(tiles=tiles, gap=0.02, bevel=0.05, height_jitter=0.1, seed=2)
    turn = g.checker(scale=max(1, tiles // 2), softness=0.0)
    grain_h = g.wood_rings(rings=36, distortion=0.3, distortion_scale=4, ring_sharpness=3.0, grain=0.6,
                           direction="horizontal", seed=3)
    grain_v = g.wood_rings(rings=36, distortion=0.3, distortion_scale=4, ring_sharpness=3.0, grain=0.6,
                           direction="vertical", seed=5)
    grain = g.blend(grain_v, grain_h, mask=turn, mode="copy")
    seams_h = g.stripes(kx=0, ky=tiles * strips, width=0.94, softness=0.05)
    seams_v = g.stripes(kx=tiles * strips, ky=0, width=0.94, softness=0.05)
    seams = g.blend(seams_v, seams_h, mask=turn, mode="copy")
    joints = g.blend(seams, blocks.p("height"), mode="multiply")
    tone = g.blend(blocks.p("random"), grain, mode="soft_light", opacity=0.5)
    wood_color = palette(g, tone, wood_colors, (0.0, 0.35, 0.7, 1.0))
    wood_color = mottle(g, wood_color, scale=8, lightness=-0.1, saturation=0.1, opacity=0.4)
    height = g.levels(g.blend(g.levels(grain, out_low=0.0, out_high=0.1), joints, mode="multiply"), name="height")
    albedo = grime(g, wood_color, g.invert(joints), rgb=(0.1, 0.06, 0.03), amount=0.5)
    varnish = g.perlin_fbm(scale=6, octaves=4, seed=9)
    rough = g.levels(g.blend(varnish, grain, mode="overlay", opacity=0.3), out_low=0.25, out_high=0.45)
    finish(g, height, albedo, rough, normal=2.0, ao_radius=4.0, ao_intensity=2.0, ao_amount=0.4)
    return g


def raw_wood(name, wood_colors, rings=20, knots=0.5, weathered=0.0, strips=0, description="") -> GraphBuilder:
    """A single board of sawn wood: growth rings around knots, fibres, weathering cracks."""
    g = GraphBuilder(name, "wood", description)
    knot_spots = g.scatter_shapes(count=2, shape="gaussian", size=0.4, density=knots, position_jitter=1.0,
                                  value_jitter=0.2, softness=0.8, seed=4)
    rings_img = g.wood_rings(rings=rings, distortion=0.5, distortion_scale=3, ring_sharpness=2.0, grain=0.5,
                             direction="vertical", seed=3)
    bent = g.warp(rings_img, g.blur(knot_spots, sigma=6.0), intensity=4.0)
    fibres = g.anisotropic_noise(scale=4, stretch=48, octaves=4, persistence=0.6, direction="vertical", seed=6)
    wood = g.blend(fibres, bent, mode="overlay", opacity=0.4)
    knot_core = g.levels(knot_spots, in_low=0.6, in_high=0.9)
    wood = g.blend(g.invert(knot_core), wood, mode="multiply", opacity=0.8)
    wood_color = palette(g, wood, wood_colors, (0.0, 0.3, 0.65, 1.0))
    wood_color = mottle(g, wood_color, scale=4, lightness=-0.1, saturation=-0.1, opacity=0.5)
    cracks = g.levels(g.ridged_fbm(scale=2, octaves=4, sharpness=6.0, seed=8), in_low=0.7, in_high=1.0)
    cracks = g.transform_2d(cracks, tile_x=4, tile_y=1)
    cracks = g.blend(cracks, fibres, mode="multiply", opacity=0.5)
    gray = g.hsl(wood_color, saturation=-0.7, lightness=0.1)
    albedo = g.blend_color(gray, wood_color, mode="copy", opacity=weathered)
    albedo = g.blend_color(color(g, (0.05, 0.04, 0.03)), albedo, mask=cracks, mode="copy", opacity=0.4 + weathered * 0.5)
    relief = g.blend(cracks, g.levels(wood, out_low=0.3, out_high=0.7), mode="subtract", opacity=0.3 + weathered * 0.5)
    if strips:
        layout = g.bricks(rows=strips, columns=1, offset=0.5, row_jitter=0.5, gap=0.03, bevel=0.1,
                          height_jitter=0.05, seed=12)
        layout_height = g.transform_2d(layout.p("height"), rotation="90")
        per_strip = g.transform_2d(layout.p("random"), rotation="90")
        relief = g.blend(layout_height, relief, mode="multiply")
        albedo = g.blend_color(g.hsl(albedo, lightness=-0.12, hue=-0.01), albedo, mask=per_strip, mode="copy",
                               opacity=0.6)
        albedo = g.blend_color(layout_height, albedo, mode="multiply", opacity=0.5)
    height = g.levels(relief, name="height")
    rough = g.levels(fibres, out_low=0.55 + 0.3 * weathered, out_high=0.75 + 0.2 * weathered)
    finish(g, height, albedo, rough, normal=2.0 + 2.0 * weathered, ao_radius=6.0, ao_intensity=3.0)
    return g


# ----------------------------------------------------------------------------- bark

def bark(name, bark_colors, kind="furrowed", lichen_amount=0.25, description="") -> GraphBuilder:
    g = GraphBuilder(name, "bark", description)
    if kind == "plates":
        cells = g.voronoi_cells(scale=6, jitter=0.8, edge_width=0.12, seed=3)
        plates = g.transform_2d(g.invert(cells.p("edges")), tile_x=2, tile_y=1)
        per_plate = g.transform_2d(cells.p("out"), tile_x=2, tile_y=1)
        flakes = g.ridged_fbm(scale=8, octaves=5, sharpness=2.0, seed=4)
        relief = g.blend(flakes, plates, mode="multiply", opacity=0.5)
    elif kind == "papery":
        plates = g.uniform_gray(value=0.8)
        per_plate = g.value_fbm(scale=3, octaves=3, seed=3)
        flakes = g.scratches(count=14, density=0.8, length=0.35, width=0.003, angle=0.0, angle_jitter=0.03,
                             intensity_jitter=0.5, seed=4)
        lenticels = g.dilate_erode(flakes, mode="dilate", radius=0.7)
        relief = g.blend(g.invert(lenticels), plates, mode="multiply", opacity=0.4)
    else:
        furrows = g.ridged_fbm(scale=3, octaves=6, persistence=0.55, sharpness=1.5, seed=3)
        plates = g.levels(g.transform_2d(g.invert(furrows), tile_x=4, tile_y=1), in_low=0.1, in_high=0.8, gamma=0.6)
        per_plate = g.value_fbm(scale=4, octaves=4, seed=5)
        flakes = g.perlin_fbm(scale=12, octaves=5, seed=4)
        relief = g.blend(flakes, plates, mode="overlay", opacity=0.4)
    fibres = g.anisotropic_noise(scale=6, stretch=24, octaves=4, direction="vertical" if kind != "papery"
                                 else "horizontal", seed=6)
    relief = g.blend(fibres, relief, mode="overlay", opacity=0.3)
    height = g.levels(g.slope_blur(relief, g.perlin_fbm(scale=4, octaves=3, seed=7), intensity=1.0, mode="min"),
                      name="height")
    tone = g.blend(per_plate, height, mode="soft_light", opacity=0.5)
    albedo = palette(g, tone, bark_colors, (0.0, 0.3, 0.65, 1.0))
    albedo = mottle(g, albedo, scale=6, lightness=-0.15, hue=0.03, opacity=0.5)
    lichen_mask = g.histogram_scan(g.clouds(scale=5, cover=0.3, softness=0.4, seed=9), position=0.5, contrast=0.7)
    lichen = mottle(g, color(g, (0.45, 0.5, 0.32)), scale=24, lightness=-0.2, seed=10)
    albedo = g.blend_color(lichen, albedo, mask=lichen_mask, mode="copy", opacity=lichen_amount)
    shading = g.emboss(g.uniform_gray(value=0.5), height, intensity=3.0, angle=135.0)
    albedo = g.blend_color(shading, albedo, mode="overlay", opacity=0.3)
    rough = g.levels(height, out_low=0.95, out_high=0.75)
    finish(g, height, albedo, rough, normal=4.0, ao_radius=12.0, ao_intensity=5.0, ao_amount=0.7)
    return g


# ----------------------------------------------------------------------------- tiles and paving

def tiles(name, category, layout, tile_colors, grout_rgb, count=6, gap=0.06, gloss=0.1, relief=0.3,
          accent=None, dirt=0.3, description="") -> GraphBuilder:
    """Tiles or pavers: a layout node, per-tile colour, surface relief, grout, grime."""
    g = GraphBuilder(name, category, description)
    if layout == "hex":
        pattern = g.hex_tiles(columns=count, gap=gap, bevel=0.3, height_jitter=0.2 * relief, seed=3)
    elif layout == "bricks":
        pattern = g.bricks(rows=count, columns=max(1, count // 3), offset=0.5, gap=gap, bevel=0.25,
                           roundness=0.1, height_jitter=0.2 * relief, seed=3)
    elif layout == "cobble":
        cells = g.voronoi_cells(scale=count, jitter=0.7, edge_width=0.25, seed=3)
        pattern = None
    else:
        pattern = g.square_tiles(tiles=count, gap=gap, bevel=0.2, roundness=0.05, height_jitter=0.2 * relief, seed=3)
    if pattern is not None:
        shape, mask, per_tile = pattern.p("height"), pattern.p("mask"), pattern.p("random")
    else:
        shape = g.levels(g.invert(cells.p("edges")), gamma=0.6)
        mask = g.levels(shape, in_low=0.05, in_high=0.25)
        per_tile = cells.p("out")
    surface = g.perlin_fbm(scale=8, octaves=6, persistence=0.55, seed=5)
    chips = g.warp(shape, g.perlin_fbm(scale=16, octaves=4, seed=6), intensity=0.02 + 0.08 * relief)
    tile_height = g.blend(g.levels(surface, out_low=1.0 - 0.4 * relief, out_high=1.0), chips, mode="multiply")
    grout = g.levels(g.perlin_fbm(scale=32, octaves=3, seed=7), out_low=0.05, out_high=0.15)
    height = g.levels(g.blend(tile_height, grout, mode="lighten"), name="height")
    tone = g.blend(surface, per_tile, mode="overlay", opacity=0.3)
    tile_color = palette(g, tone, tile_colors, (0.0, 0.35, 0.65, 1.0))
    if accent is not None:
        pick = g.threshold(per_tile, threshold=accent[0])
        tile_color = g.blend_color(color(g, accent[1]), tile_color, mask=pick, mode="copy")
    tile_color = mottle(g, tile_color, scale=10, lightness=-0.1, opacity=0.4)
    grout_color = mottle(g, color(g, grout_rgb), scale=24, lightness=-0.15, opacity=0.6, seed=13)
    albedo = g.blend_color(tile_color, grout_color, mask=mask, mode="copy")
    worn_edges = g.blend(g.edge_detect(mask, width=1.5, intensity=1.0), surface, mode="multiply")
    albedo = g.blend_color(g.hsl(albedo, lightness=0.15, saturation=-0.2), albedo, mask=worn_edges, mode="copy",
                           opacity=0.3 + 0.4 * relief)
    albedo = grime(g, albedo, g.invert(height), amount=dirt)
    albedo = g.levels_color(albedo, in_low=0.0, in_high=1.0, gamma=1.0)
    rough = g.levels(surface, out_low=gloss, out_high=gloss + 0.2)
    rough = g.blend(g.uniform_gray(value=0.9), rough, mask=g.invert(mask), mode="copy")
    finish(g, height, albedo, rough, normal=1.5 + 1.5 * relief, ao_radius=8.0, ao_intensity=3.0, ao_amount=0.5)
    return g


def checker_tiles(name, dark_rgb, light_rgb, count=8, description="") -> GraphBuilder:
    g = GraphBuilder(name, "tiles", description)
    layout = g.square_tiles(tiles=count, gap=0.03, bevel=0.1, height_jitter=0.05, seed=3)
    squares = g.checker(scale=max(1, count // 2))
    veins = g.levels(g.ridged_fbm(scale=4, octaves=5, sharpness=4.0, seed=4), in_low=0.4, in_high=1.0)
    stone = g.blend(veins, g.value_fbm(scale=6, octaves=5, seed=5), mode="screen", opacity=0.4)
    dark = mottle(g, g.blend_color(g.tint(stone, color=[0.5, 0.5, 0.5]), color(g, dark_rgb), mode="add",
                                   opacity=0.3), scale=8, lightness=-0.05, opacity=0.5)
    light = g.blend_color(g.tint(g.invert(stone), color=[0.9, 0.88, 0.85]), color(g, light_rgb), mode="multiply",
                          opacity=0.3)
    tile_color = g.blend_color(light, dark, mask=squares, mode="copy")
    grout = color(g, (0.5, 0.49, 0.46))
    albedo = g.blend_color(tile_color, grout, mask=layout.p("mask"), mode="copy")
    albedo = grime(g, albedo, g.invert(layout.p("height")), amount=0.3)
    height = g.levels(g.blend(g.levels(stone, out_low=0.95, out_high=1.0), layout.p("height"), mode="multiply"),
                      name="height")
    rough = g.blend(g.uniform_gray(value=0.85), g.levels(stone, out_low=0.05, out_high=0.2),
                    mask=g.invert(layout.p("mask")), mode="copy")
    finish(g, height, albedo, rough, normal=2.0, ao_radius=6.0, ao_intensity=2.0, ao_amount=0.4)
    return g


# ----------------------------------------------------------------------------- stone

def stone(name, kind, colors, description="") -> GraphBuilder:
    g = GraphBuilder(name, "stone", description)
    if kind == "granite":
        grains = g.blur(g.white_noise(scale=128, seed=3), sigma=0.4)
        crystals = g.scatter_shapes(count=32, shape="square", size=0.9, size_jitter=0.6, position_jitter=1.0,
                                    rotation_jitter=1.0, density=1.0, value_jitter=1.0, softness=0.05, seed=4)
        fine_crystals = g.transform_2d(g.scatter_shapes(count=32, shape="square", size=0.8, size_jitter=0.6,
                                                        position_jitter=1.0, rotation_jitter=1.0, density=1.0,
                                                        value_jitter=1.0, softness=0.05, seed=7), tile_x=2, tile_y=2)
        base = g.value_fbm(scale=8, octaves=5, seed=5)
        pattern = g.blend(grains, g.blend(crystals, fine_crystals, mode="lighten"), mode="overlay", opacity=0.5)
        pattern = g.blend(base, g.levels(pattern, in_low=0.0, in_high=0.7), mode="screen", opacity=0.35)
        relief = g.levels(g.perlin_fbm(scale=16, octaves=5, seed=6), out_low=0.4, out_high=0.6)
        gloss = (0.3, 0.5)
    elif kind == "slate":
        layers = g.anisotropic_noise(scale=2, stretch=12, octaves=5, persistence=0.6, seed=3)
        steps = g.histogram_scan(g.perlin_fbm(scale=3, octaves=6, seed=4), position=0.5, contrast=0.4)
        pattern = g.blend(layers, steps, mode="overlay", opacity=0.5)
        base = g.ridged_fbm(scale=4, octaves=5, sharpness=3.0, seed=5)
        relief = g.blend(g.levels(steps, out_low=0.2, out_high=0.8), g.levels(base, out_low=0.4, out_high=0.6),
                         mode="add", opacity=0.5)
        gloss = (0.45, 0.7)
    elif kind == "sandstone":
        strata = g.waves(kx=0, ky=10, wobble=0.3, wobble_frequency=2, sharpness=1.5)
        base = g.perlin_fbm(scale=4, octaves=6, persistence=0.6, seed=3)
        strata = g.directional_warp(strata, base, intensity=0.08, angle=90.0)
        grit = g.white_noise(scale=256, seed=4)
        pattern = g.blend(g.blur(grit, sigma=0.5), g.blend(strata, base, mode="overlay", opacity=0.5),
                          mode="overlay", opacity=0.25)
        relief = g.levels(g.blend(strata, g.ridged_fbm(scale=6, octaves=5, seed=5), mode="multiply", opacity=0.5),
                          out_low=0.3, out_high=0.7)
        gloss = (0.8, 0.95)
    else:  # rough rock
        base = g.ridged_fbm(scale=3, octaves=7, persistence=0.55, sharpness=1.5, seed=3)
        detail = g.perlin_fbm(scale=12, octaves=5, seed=4)
        eroded = g.slope_blur(base, detail, intensity=2.0, mode="min")
        pattern = g.blend(detail, eroded, mode="overlay", opacity=0.4)
        relief = g.blend(eroded, detail, mode="overlay", opacity=0.3)
        gloss = (0.7, 0.9)
    height = g.levels(relief, name="height")
    albedo = palette(g, pattern, colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=5, lightness=-0.12, hue=0.02, opacity=0.5)
    cavity = g.invert(height)
    albedo = grime(g, albedo, cavity, amount=0.3)
    rough = g.levels(g.blend(pattern, height, mode="overlay", opacity=0.5), out_low=gloss[0], out_high=gloss[1])
    finish(g, height, albedo, rough, normal=3.0, ao_radius=10.0, ao_intensity=4.0, ao_amount=0.5)
    return g


# ----------------------------------------------------------------------------- concrete and plaster

def concrete(name, kind, colors, category="concrete", description="") -> GraphBuilder:
    g = GraphBuilder(name, category, description)
    base = g.value_fbm(scale=4, octaves=7, persistence=0.6, seed=3)
    fine = g.perlin_fbm(scale=32, octaves=4, persistence=0.5, seed=4)
    pores = g.scatter_shapes(count=32, shape="dome", size=0.25, size_jitter=0.7, density=0.4, value_jitter=0.5,
                             softness=0.3, seed=5)
    surface = g.blend(fine, base, mode="overlay", opacity=0.4)
    relief = g.blend(pores, g.levels(surface, out_low=0.4, out_high=0.6), mode="subtract", opacity=0.5)
    stains = g.histogram_range(g.clouds(scale=3, cover=0.4, softness=0.9, seed=6), range=0.8, position=0.5)
    if kind == "panels":
        layout = g.square_tiles(tiles=2, gap=0.015, bevel=0.02, height_jitter=0.05, seed=7)
        holes = g.scatter_shapes(count=4, shape="disc", size=0.06, size_jitter=0.0, position_jitter=0.0,
                                 density=1.0, value_jitter=0.0, softness=0.2, seed=8)
        holes = g.transform_2d(holes, offset_x=0.125, offset_y=0.125)
        relief = g.blend(g.blend(holes, layout.p("height"), mode="subtract"), relief, mode="multiply")
    elif kind == "cracked":
        cells = g.voronoi_cells(scale=3, jitter=0.7, edge_width=0.015, seed=9)
        cracks = g.warp(cells.p("edges"), g.perlin_fbm(scale=8, octaves=5, seed=10), intensity=0.12)
        cracks = g.blend(cracks, g.levels(g.clouds(scale=3, cover=0.6, seed=11), in_low=0.2, in_high=0.5),
                         mode="multiply")
        relief = g.blend(cracks, relief, mode="subtract", opacity=0.8)
        stains = g.blend(g.invert(cracks), stains, mode="multiply")
    elif kind == "stucco":
        blobs = g.levels(g.perlin_fbm(scale=16, octaves=3, persistence=0.4, contrast=2.0, seed=10), in_low=0.4,
                         in_high=0.8)
        trowel = g.directional_blur(blobs, sigma=3.0, angle=30.0)
        relief = g.blend(trowel, relief, mode="screen", opacity=0.8)
    elif kind == "asphalt":
        chips = g.levels(g.blur(g.white_noise(scale=128, seed=12), sigma=0.6), in_low=0.55, in_high=0.8)
        relief = g.blend(chips, relief, mode="screen", opacity=0.6)
        stains = g.blend(chips, stains, mode="screen", opacity=0.8)
    elif kind == "aggregate":
        stones = g.scatter_shapes(count=24, shape="dome", size=0.7, size_jitter=0.5, position_jitter=1.0,
                                  density=0.9, value_jitter=0.6, softness=0.2, seed=11)
        relief = g.blend(stones, relief, mode="lighten")
        stains = g.blend(stones, stains, mode="multiply", opacity=0.5)
    height = g.levels(relief, name="height")
    tone = g.blend(stains, surface, mode="multiply", opacity=0.4)
    albedo = palette(g, tone, colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=3, lightness=-0.1, opacity=0.5)
    albedo = grime(g, albedo, g.invert(height), amount=0.4)
    rough = g.levels(g.blend(fine, stains, mode="screen", opacity=0.3), out_low=0.75, out_high=0.95)
    finish(g, height, albedo, rough, normal=2.5, ao_radius=6.0, ao_intensity=3.0, ao_amount=0.5)
    return g


# ----------------------------------------------------------------------------- metal

def metal(name, kind, colors, gloss=0.25, description="") -> GraphBuilder:
    g = GraphBuilder(name, "metal", description)
    smudges = g.clouds(scale=4, cover=0.45, softness=0.8, seed=3)
    fine = g.perlin_fbm(scale=24, octaves=4, seed=4)
    if kind == "brushed":
        pattern = g.anisotropic_noise(scale=2, stretch=64, octaves=5, persistence=0.6, seed=5)
        relief = g.levels(pattern, out_low=0.45, out_high=0.55)
    elif kind == "hammered":
        dents = g.worley(scale=10, jitter=0.75, seed=5)
        small = g.worley(scale=20, jitter=0.75, seed=6)
        pattern = g.blend(small.p("f1"), dents.p("f1"), mode="multiply", opacity=0.4)
        relief = g.levels(g.blur(pattern, sigma=1.0), gamma=0.7)
    elif kind == "scratched":
        a = g.scratches(count=12, density=0.8, length=0.8, width=0.002, angle=0.1, angle_jitter=0.2, seed=5)
        b = g.scratches(count=20, density=0.6, length=0.5, width=0.0015, angle=0.6, angle_jitter=1.0, seed=6)
        pattern = g.blend(a, b, mode="lighten")
        relief = g.levels(g.invert(pattern), out_low=0.4, out_high=0.5)
    elif kind == "spangle":
        cells = g.voronoi_cells(scale=8, jitter=0.8, edge_width=0.03, seed=5)
        pattern = g.blend(g.anisotropic_noise(scale=3, stretch=8, seed=6), cells.p("out"), mode="overlay",
                          opacity=0.3)
        relief = g.levels(g.invert(cells.p("edges")), out_low=0.45, out_high=0.5)
    else:  # tread plate
        bumps = g.scatter_shapes(count=8, shape="dome", size=0.45, size_jitter=0.0, position_jitter=0.0,
                                 rotation_jitter=0.0, density=1.0, value_jitter=0.0, softness=0.6, seed=5)
        long_h = g.transform_2d(bumps, tile_x=1, tile_y=2)
        long_v = g.transform_2d(bumps, tile_x=2, tile_y=1, offset_x=0.25)
        pattern = g.blend(long_v, long_h, mask=g.checker(scale=4), mode="copy")
        relief = g.levels(pattern, gamma=0.5)
    height = g.levels(relief, name="height")
    albedo = palette(g, g.blend(pattern, fine, mode="overlay", opacity=0.3), colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=6, lightness=-0.08, opacity=0.4)
    albedo = g.blend_color(g.hsl(albedo, lightness=-0.15), albedo, mask=smudges, mode="copy", opacity=0.3)
    rough = g.levels(g.blend(smudges, pattern, mode="overlay", opacity=0.5), out_low=gloss, out_high=gloss + 0.2)
    metallic = g.levels(fine, out_low=0.95, out_high=1.0)
    finish(g, height, albedo, rough, metallic=metallic, normal=2.0, ao_radius=6.0, ao_intensity=2.0, ao_amount=0.3)
    return g


# ----------------------------------------------------------------------------- fabric

def fabric(name, colors, threads=16, weave="plain", woven=None, fuzz=0.4, gloss=0.85, description="") -> GraphBuilder:
    """Cloth: threads from the weave node (`woven` names its pattern) or from waves crossed by a mask."""
    g = GraphBuilder(name, "fabric", description)
    fibres_x = g.anisotropic_noise(scale=4, stretch=32, octaves=4, direction="horizontal", seed=4)
    fibres_y = g.anisotropic_noise(scale=4, stretch=32, octaves=4, direction="vertical", seed=5)
    if woven is not None:
        cloth_threads = g.weave(repeats=max(1, threads // 4), pattern=woven, thread_width=0.85, undulation=0.5,
                                thread_jitter=0.3, seed=3)
        weave_height = cloth_threads.p("height")
        over = cloth_threads.p("random")
        fibres = g.blend(fibres_y, fibres_x, mode="overlay", opacity=0.5)
    else:
        along_x = g.waves(kx=0, ky=threads, wobble=0.04, wobble_frequency=3, sharpness=1.5)
        along_y = g.waves(kx=threads, ky=0, wobble=0.04, wobble_frequency=3, sharpness=1.5)
        if weave == "cord":
            over = g.uniform_gray(value=1.0)
        else:
            over = g.checker(scale=max(1, threads // 2), softness=0.3)
        weave_height = g.blend(along_y, along_x, mask=over, mode="copy")
        fibres = g.blend(fibres_y, fibres_x, mask=over, mode="copy")
    cloth = g.blend(fibres, weave_height, mode="overlay", opacity=fuzz)
    cloth = g.transform_2d(cloth, tile_x=2, tile_y=2)
    wrinkles = g.perlin_fbm(scale=2, octaves=3, seed=6)
    height = g.levels(g.blend(g.levels(wrinkles, out_low=0.0, out_high=0.4), cloth, mode="add", opacity=0.5),
                      name="height")
    yarn = g.transform_2d(g.blend(over, fibres, mode="overlay", opacity=0.5), tile_x=2, tile_y=2)
    albedo = palette(g, g.blend(yarn, cloth, mode="multiply", opacity=0.5), colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=3, lightness=-0.1, opacity=0.5)
    fade = g.levels(wrinkles, in_low=0.5, in_high=0.9)
    albedo = g.blend_color(g.hsl(albedo, saturation=-0.3, lightness=0.1), albedo, mask=fade, mode="copy",
                           opacity=0.5)
    rough = g.levels(g.blend(g.grayscale(albedo), cloth, mode="overlay", opacity=0.3), out_low=gloss,
                     out_high=min(1.0, gloss + 0.12))
    finish(g, height, albedo, rough, normal=2.5, ao_radius=3.0, ao_intensity=3.0, ao_amount=0.6)
    return g


def carpet(name, colors, description="") -> GraphBuilder:
    g = GraphBuilder(name, "fabric", description)
    loops = g.worley(scale=32, jitter=0.6, seed=3)
    tufts = g.invert(loops.p("f1"))
    fuzz = g.white_noise(scale=256, seed=4)
    pile = g.blend(g.blur(fuzz, sigma=0.8), tufts, mode="overlay", opacity=0.4)
    pattern_rows = g.stripes(kx=0, ky=16, width=0.5, softness=0.4)
    pile = g.blend(pattern_rows, pile, mode="multiply", opacity=0.15)
    wear = g.perlin_fbm(scale=3, octaves=4, seed=5)
    height = g.levels(g.blend(wear, pile, mode="multiply", opacity=0.3), name="height")
    albedo = palette(g, g.blend(pile, wear, mode="overlay", opacity=0.6), colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=5, lightness=-0.1, opacity=0.5)
    albedo = grime(g, albedo, g.invert(height), rgb=(0.2, 0.18, 0.15), amount=0.3)
    rough = g.levels(pile, out_low=0.85, out_high=1.0)
    finish(g, height, albedo, rough, normal=3.0, ao_radius=2.0, ao_intensity=4.0, ao_amount=0.6)
    return g


# ----------------------------------------------------------------------------- leather

def leather(name, colors, grain=24, gloss=0.4, creases=0.5, description="") -> GraphBuilder:
    g = GraphBuilder(name, "leather", description)
    cells = g.worley(scale=grain, jitter=0.7, seed=3)
    pebbles = g.levels(cells.p("f2_f1"), in_low=0.0, in_high=0.5, gamma=1.6)
    coarse = g.worley(scale=max(1, grain // 3), jitter=0.7, seed=4)
    pebbles = g.blend(g.levels(coarse.p("f2_f1"), in_low=0.0, in_high=0.3), pebbles, mode="multiply", opacity=0.4)
    folds = g.ridged_fbm(scale=3, octaves=5, sharpness=4.0, seed=5)
    folds = g.levels(g.warp(folds, g.perlin_fbm(scale=2, octaves=2, seed=6), intensity=2.0), in_low=0.5,
                     in_high=1.0)
    pebbles = g.transform_2d(pebbles, tile_x=2, tile_y=2)
    relief = g.blend(folds, pebbles, mode="subtract", opacity=creases)
    height = g.levels(g.blur(relief, sigma=0.6), name="height")
    tone = g.blend(g.value_fbm(scale=5, octaves=5, seed=7), height, mode="overlay", opacity=0.4)
    albedo = palette(g, tone, colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=4, lightness=-0.12, saturation=0.1, opacity=0.5)
    worn = g.levels(g.blend(height, g.clouds(scale=4, cover=0.4, seed=8), mode="multiply"), in_low=0.4,
                    in_high=0.9)
    albedo = g.blend_color(g.hsl(albedo, lightness=0.15, saturation=-0.2), albedo, mask=worn, mode="copy",
                           opacity=0.5)
    rough = g.levels(g.blend(worn, height, mode="screen", opacity=0.5), out_low=gloss, out_high=gloss + 0.25)
    finish(g, height, albedo, rough, normal=1.2, ao_radius=3.0, ao_intensity=3.0, ao_amount=0.5)
    return g


# ----------------------------------------------------------------------------- ground

def ground(name, kind, colors, description="") -> GraphBuilder:
    g = GraphBuilder(name, "ground", description)
    base = g.perlin_fbm(scale=4, octaves=7, persistence=0.55, seed=3)
    grit = g.blur(g.white_noise(scale=256, seed=4), sigma=0.6)
    wet = g.clouds(scale=3, cover=0.35, softness=0.7, seed=5)
    if kind == "sand":
        ripples = g.waves(kx=0, ky=9, wobble=0.25, wobble_frequency=2, sharpness=1.5)
        ripples = g.directional_warp(ripples, g.perlin_fbm(scale=3, octaves=2, seed=8), intensity=0.05, angle=90.0)
        relief = g.blend(grit, ripples, mode="overlay", opacity=0.15)
        pattern = g.blend(ripples, grit, mode="overlay", opacity=0.5)
    elif kind == "gravel":
        cells = g.worley(scale=20, jitter=0.75, seed=6)
        pebbles = g.levels(cells.p("f2_f1"), in_low=0.0, in_high=0.3, gamma=0.5)
        relief = g.blend(grit, pebbles, mode="overlay", opacity=0.3)
        pattern = g.blend(g.value_fbm(scale=32, octaves=2, seed=9), g.blend(pebbles, grit, mode="overlay",
                          opacity=0.5), mode="overlay", opacity=0.7)
    elif kind == "mud":
        cells = g.voronoi_cells(scale=6, jitter=0.8, edge_width=0.04, seed=6)
        crack_lines = g.warp(cells.p("edges"), g.perlin_fbm(scale=12, octaves=4, seed=7), intensity=0.05)
        plates = g.levels(g.invert(crack_lines), in_low=0.2, in_high=0.9)
        relief = g.blend(g.levels(base, out_low=0.7, out_high=1.0), plates, mode="multiply")
        pattern = g.blend(plates, base, mode="multiply", opacity=0.4)
    elif kind == "leaves":
        leaves_a = g.scatter_shapes(count=6, shape="dome", size=0.9, size_jitter=0.4, position_jitter=1.0,
                                    density=0.9, value_jitter=0.8, softness=0.1, seed=6)
        leaves_b = g.scatter_shapes(count=8, shape="dome", size=0.8, size_jitter=0.5, position_jitter=1.0,
                                    density=0.8, value_jitter=0.8, softness=0.1, seed=7)
        leaves_a = g.transform_2d(leaves_a, tile_x=2, tile_y=1)
        leaves_b = g.transform_2d(leaves_b, tile_x=1, tile_y=2)
        litter = g.warp(g.blend(leaves_a, leaves_b, mode="lighten"), g.perlin_fbm(scale=4, octaves=2, seed=8),
                        intensity=1.0)
        relief = g.blend(litter, g.levels(base, out_low=0.0, out_high=0.4), mode="lighten")
        pattern = g.blend(litter, grit, mode="overlay", opacity=0.3)
    else:  # dirt
        stones = g.scatter_shapes(count=24, shape="dome", size=0.4, size_jitter=0.6, density=0.5, value_jitter=0.5,
                                  softness=0.3, seed=6)
        relief = g.blend(stones, g.blend(grit, base, mode="overlay", opacity=0.3), mode="lighten", opacity=0.7)
        pattern = g.blend(stones, g.blend(grit, base, mode="overlay", opacity=0.5), mode="screen", opacity=0.4)
    height = g.levels(g.clamp(relief, low=0.02, high=0.98), name="height")
    albedo = palette(g, pattern, colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=5, lightness=-0.12, hue=0.02, opacity=0.5)
    albedo = g.blend_color(g.hsl(albedo, lightness=-0.25, saturation=0.1), albedo, mask=wet, mode="copy",
                           opacity=0.6)
    rough = g.blend(g.uniform_gray(value=0.55), g.levels(grit, out_low=0.8, out_high=1.0), mask=wet, mode="copy",
                    opacity=0.7)
    finish(g, height, albedo, rough, normal=3.0, ao_radius=6.0, ao_intensity=4.0, ao_amount=0.6)
    return g


# ----------------------------------------------------------------------------- terrazzo

def terrazzo(name, base_rgb, chip_colors, chips=24, gloss=0.15, description="") -> GraphBuilder:
    g = GraphBuilder(name, "terrazzo", description)
    big = g.scatter_shapes(count=max(2, chips // 2), shape="square", size=0.8, size_jitter=0.5,
                           position_jitter=1.0, rotation_jitter=1.0, density=0.95, value_jitter=1.0, softness=0.05,
                           seed=3)
    small = g.scatter_shapes(count=chips, shape="square", size=0.7, size_jitter=0.6, position_jitter=1.0,
                             rotation_jitter=1.0, density=0.9, value_jitter=1.0, softness=0.05, seed=4)
    edges = g.perlin_fbm(scale=24, octaves=4, seed=5)
    big = g.warp(big, edges, intensity=0.15)
    small = g.warp(small, edges, intensity=0.1)
    chips_img = g.blend(big, small, mode="lighten")
    chip_mask = g.threshold(chips_img, threshold=0.02)
    chip_color = palette(g, chips_img, chip_colors, (0.0, 0.35, 0.7, 1.0))
    chip_color = g.blur_color(mottle(g, chip_color, scale=16, lightness=-0.1, opacity=0.4), sigma=0.4)
    cement = mottle(g, color(g, base_rgb), scale=6, lightness=-0.06, opacity=0.6, seed=12)
    speckle = g.blur(g.white_noise(scale=256, seed=6), sigma=0.5)
    cement = g.blend_color(g.hsl(cement, lightness=-0.2), cement, mask=g.threshold(speckle, threshold=0.85),
                           mode="copy", opacity=0.5)
    albedo = g.blend_color(chip_color, cement, mask=chip_mask, mode="copy")
    height = g.levels(g.blend(chip_mask, g.perlin_fbm(scale=8, octaves=5, seed=7), mode="add", opacity=0.05),
                      out_low=0.48, out_high=0.52, name="height")
    rough = g.levels(g.blend(chip_mask, edges, mode="overlay", opacity=0.5), out_low=gloss, out_high=gloss + 0.1)
    finish(g, height, albedo, rough, normal=1.0, ao_radius=2.0, ao_intensity=1.0, ao_amount=0.2)
    return g


# ----------------------------------------------------------------------------- plastic, paper, cork

def plastic(name, rgb, kind="peel", gloss=0.3, description="") -> GraphBuilder:
    g = GraphBuilder(name, "plastic", description)
    fine = g.perlin_fbm(scale=32, octaves=3, persistence=0.5, seed=3)
    if kind == "studs":
        studs = g.levels(g.radial_gradient(count=12, radius=0.55, falloff=0.4), in_low=0.0, in_high=0.3)
        relief = g.blend(g.levels(fine, out_low=0.0, out_high=0.1), studs, mode="add")
    elif kind == "ribbed":
        ribs = g.waves(kx=0, ky=12, wobble=0.0, wobble_frequency=0, sharpness=1.0)
        relief = g.blend(g.levels(fine, out_low=0.0, out_high=0.1), ribs, mode="add")
    else:
        relief = g.levels(g.blend(g.blur(fine, sigma=1.0), g.perlin_fbm(scale=16, octaves=2, seed=4),
                                  mode="overlay", opacity=0.5), out_low=0.4, out_high=0.6)
    scuffs = g.scratches(count=10, density=0.5, length=0.4, width=0.002, angle_jitter=1.0, seed=5)
    dust = g.clouds(scale=4, cover=0.35, softness=0.8, seed=6)
    height = g.levels(g.blend(scuffs, relief, mode="subtract", opacity=0.3), name="height")
    base = mottle(g, color(g, rgb), scale=4, lightness=-0.05, saturation=-0.05, opacity=0.5)
    albedo = g.blend_color(g.hsl(base, saturation=-0.4, lightness=0.2), base, mask=g.blend(dust, scuffs,
                           mode="lighten"), mode="copy", opacity=0.4)
    albedo = g.blend_color(g.curve(height, at_0=0.8, at_25=0.9, at_50=1.0, at_75=1.0, at_100=1.0), albedo,
                           mode="multiply", opacity=0.5)
    rough = g.levels(g.blend(dust, scuffs, mode="screen"), out_low=gloss, out_high=gloss + 0.3)
    finish(g, height, albedo, rough, normal=1.5, ao_radius=4.0, ao_intensity=2.0, ao_amount=0.3)
    return g


def paper(name, kind, colors, description="") -> GraphBuilder:
    g = GraphBuilder(name, "paper", description)
    fibres = g.blend(g.anisotropic_noise(scale=8, stretch=12, octaves=4, seed=3),
                     g.anisotropic_noise(scale=8, stretch=12, octaves=4, direction="vertical", seed=4),
                     mode="overlay", opacity=0.5)
    if kind == "cork":
        granules = g.voronoi_cells(scale=32, jitter=0.8, edge_width=0.3, seed=5)
        pattern = g.blend(granules.p("out"), g.invert(granules.p("edges")), mode="multiply", opacity=0.3)
        pattern = g.transform_2d(pattern, tile_x=2, tile_y=2)
        relief = g.blend(g.blur(g.white_noise(scale=128, seed=6), sigma=0.7), pattern, mode="overlay", opacity=0.5)
    elif kind == "cardboard":
        flutes = g.waves(kx=0, ky=12, wobble=0.01, wobble_frequency=1, sharpness=1.0)
        pattern = g.blend(flutes, g.blend(fibres, g.perlin_fbm(scale=4, octaves=5, seed=5), mode="overlay",
                                          opacity=0.3), mode="soft_light", opacity=0.5)
        relief = g.blend(fibres, flutes, mode="overlay", opacity=0.15)
    else:  # crumpled
        creases = g.ridged_fbm(scale=3, octaves=5, persistence=0.5, sharpness=1.2, seed=5)
        folds = g.ridged_fbm(scale=5, octaves=4, sharpness=1.0, seed=6)
        relief = g.blend(folds, creases, mode="overlay", opacity=0.5)
        pattern = g.blend(fibres, relief, mode="overlay", opacity=0.2)
    height = g.levels(relief, name="height")
    pattern = g.non_uniform_blur(pattern, g.perlin_fbm(scale=3, octaves=3, seed=14), sigma=2.0)
    albedo = palette(g, pattern, colors, (0.0, 0.35, 0.7, 1.0))
    albedo = mottle(g, albedo, scale=3, lightness=-0.06, opacity=0.5)
    albedo = grime(g, albedo, g.invert(height), rgb=(0.3, 0.25, 0.2), amount=0.2)
    rough = g.levels(fibres, out_low=0.8, out_high=0.95)
    finish(g, height, albedo, rough, normal=2.5, ao_radius=6.0, ao_intensity=2.0, ao_amount=0.4)
    return g


# ----------------------------------------------------------------------------- the library

BROWN_BRICK = [(0.3, 0.1, 0.06), (0.45, 0.17, 0.09), (0.55, 0.25, 0.14), (0.62, 0.35, 0.22)]
OAK = [(0.25, 0.14, 0.07), (0.45, 0.28, 0.14), (0.58, 0.4, 0.22), (0.68, 0.5, 0.3)]
WALNUT = [(0.1, 0.05, 0.03), (0.2, 0.11, 0.06), (0.3, 0.18, 0.1), (0.4, 0.26, 0.16)]
PINE = [(0.5, 0.33, 0.16), (0.7, 0.52, 0.3), (0.8, 0.64, 0.42), (0.87, 0.75, 0.55)]
BAMBOO = [(0.55, 0.42, 0.22), (0.7, 0.56, 0.32), (0.78, 0.65, 0.42), (0.85, 0.74, 0.52)]
WHITE_MARBLE = [(0.78, 0.77, 0.75), (0.85, 0.84, 0.82), (0.9, 0.89, 0.87), (0.95, 0.94, 0.93)]
GREY_VEINS = [(0.2, 0.2, 0.22), (0.35, 0.35, 0.38), (0.55, 0.55, 0.57), (0.75, 0.75, 0.76)]

RECIPES = [
    # bricks
    partial(bricks, "red_bricks", BROWN_BRICK, (0.55, 0.52, 0.47),
            description="Red clay bricks in running bond with grey mortar"),
    partial(bricks, "old_mossy_bricks", [(0.25, 0.12, 0.08), (0.38, 0.2, 0.12), (0.48, 0.3, 0.2), (0.55, 0.42, 0.32)],
            (0.45, 0.43, 0.38), rows=10, worn=0.9, moss=True, description="Weathered old bricks with moss in the joints"),
    partial(bricks, "white_painted_bricks", BROWN_BRICK, (0.6, 0.58, 0.55), rows=14, worn=0.5, paint=(0.9, 0.89, 0.86),
            description="Bricks under flaking white paint"),
    partial(bricks, "yellow_stack_bond_bricks", [(0.5, 0.38, 0.2), (0.65, 0.52, 0.3), (0.75, 0.63, 0.4),
                                                 (0.82, 0.72, 0.5)], (0.35, 0.33, 0.3), rows=16, columns=5,
            offset=0.0, gap=0.08, worn=0.2, description="Yellow clinker bricks in stack bond with dark mortar"),
    partial(bricks, "long_roman_bricks", [(0.35, 0.2, 0.15), (0.48, 0.3, 0.22), (0.58, 0.42, 0.32),
                                          (0.66, 0.52, 0.42)], (0.7, 0.68, 0.62), rows=20, columns=3, gap=0.14,
            worn=0.6, description="Long thin hand-made bricks with wide pale mortar"),
    # wood
    partial(planks, "oak_planks", OAK, description="Oak floor planks, staggered, satin finish"),
    partial(planks, "walnut_planks", WALNUT, rows=8, columns=3, rings=36, gloss=0.2, worn=0.1,
            description="Dark walnut floor boards, glossy varnish"),
    partial(planks, "wood_laminate", [(0.45, 0.32, 0.2), (0.58, 0.43, 0.28), (0.66, 0.52, 0.35),
                                      (0.74, 0.6, 0.43)], rows=5, columns=1, rings=40, gloss=0.3, worn=0.0,
            description="Laminate flooring, long printed-oak boards"),
    partial(parquet, "oak_parquet", OAK, description="Basket-weave oak parquet"),
    partial(raw_wood, "pine_board", PINE, description="A knotty pine board, sanded"),
    partial(raw_wood, "weathered_wood", [(0.22, 0.2, 0.17), (0.38, 0.34, 0.29), (0.5, 0.46, 0.4),
                                         (0.6, 0.57, 0.52)], rings=14, knots=0.3, weathered=0.8,
            description="Sun-bleached, cracked grey wood"),
    partial(raw_wood, "bamboo_strips", BAMBOO, rings=40, knots=0.0, strips=8,
            description="Strip bamboo flooring"),
    # bark
    partial(bark, "pine_bark", [(0.12, 0.07, 0.05), (0.3, 0.18, 0.11), (0.45, 0.3, 0.2), (0.55, 0.42, 0.32)],
            kind="plates", description="Pine bark: thick plates split by deep fissures"),
    partial(bark, "oak_bark", [(0.08, 0.07, 0.06), (0.25, 0.2, 0.16), (0.4, 0.34, 0.28), (0.52, 0.47, 0.4)],
            kind="furrowed", lichen_amount=0.1, description="Oak bark with long vertical furrows"),
    partial(bark, "birch_bark", [(0.1, 0.1, 0.1), (0.55, 0.53, 0.5), (0.82, 0.8, 0.77), (0.92, 0.9, 0.87)],
            kind="papery", lichen_amount=0.15, description="White papery birch bark with dark lenticels"),
    # tiles
    partial(tiles, "white_bathroom_tiles", "tiles", "square", [(0.82, 0.82, 0.8), (0.86, 0.86, 0.84),
                                                               (0.9, 0.9, 0.88), (0.93, 0.93, 0.92)],
            (0.55, 0.54, 0.5), count=6, gap=0.05, gloss=0.05, relief=0.1, dirt=0.2,
            description="Glazed white square bathroom tiles"),
    partial(tiles, "terracotta_hex_tiles", "tiles", "hex", [(0.45, 0.18, 0.08), (0.55, 0.25, 0.12),
                                                            (0.62, 0.33, 0.18), (0.7, 0.42, 0.26)],
            (0.6, 0.57, 0.5), count=6, gap=0.06, gloss=0.55, relief=0.5, description="Hexagonal terracotta tiles"),
    partial(tiles, "green_subway_tiles", "tiles", "bricks", [(0.08, 0.25, 0.18), (0.12, 0.33, 0.24),
                                                             (0.16, 0.4, 0.3), (0.22, 0.48, 0.36)],
            (0.75, 0.74, 0.7), count=12, gap=0.08, gloss=0.05, relief=0.2, dirt=0.15,
            description="Glossy green subway tiles in running bond"),
    partial(tiles, "blue_mosaic_tiles", "tiles", "square", [(0.05, 0.15, 0.35), (0.1, 0.3, 0.55),
                                                            (0.3, 0.5, 0.7), (0.55, 0.7, 0.85)],
            (0.8, 0.8, 0.78), count=24, gap=0.1, gloss=0.08, relief=0.2, accent=(0.85, (0.9, 0.9, 0.92)),
            description="Small glass mosaic tiles in mixed blues"),
    partial(checker_tiles, "checker_floor_tiles", (0.08, 0.08, 0.09), (0.85, 0.84, 0.8),
            description="Black and white marble checkerboard floor"),
    # paving
    partial(tiles, "paving_slabs", "paving", "square", [(0.4, 0.39, 0.37), (0.5, 0.49, 0.46), (0.58, 0.57, 0.54),
                                                        (0.65, 0.64, 0.61)], (0.3, 0.32, 0.22), count=3,
            gap=0.04, gloss=0.75, relief=0.6, dirt=0.5, description="Large concrete paving slabs with weedy joints"),
    partial(tiles, "cobblestones", "paving", "cobble", [(0.25, 0.24, 0.23), (0.38, 0.36, 0.34), (0.5, 0.47, 0.44),
                                                        (0.6, 0.57, 0.53)], (0.2, 0.18, 0.15), count=10,
            gloss=0.5, relief=0.8, dirt=0.5, description="Rounded granite cobblestones"),
    partial(tiles, "hex_pavers", "paving", "hex", [(0.35, 0.33, 0.32), (0.45, 0.43, 0.41), (0.52, 0.5, 0.48),
                                                   (0.6, 0.58, 0.55)], (0.35, 0.3, 0.25), count=5, gap=0.05,
            gloss=0.7, relief=0.6, dirt=0.5, description="Hexagonal concrete pavers"),
    partial(tiles, "clay_pavers", "paving", "bricks", [(0.38, 0.15, 0.08), (0.48, 0.22, 0.12), (0.56, 0.3, 0.18),
                                                       (0.62, 0.4, 0.26)], (0.45, 0.42, 0.36), count=9, gap=0.04,
            gloss=0.7, relief=0.5, dirt=0.6, description="Red clay pavers in running bond"),
    # stone
    partial(stone, "granite", "granite", [(0.1, 0.09, 0.09), (0.45, 0.38, 0.36), (0.7, 0.62, 0.58),
                                          (0.88, 0.85, 0.82)], description="Speckled pink-grey granite, honed"),
    partial(stone, "slate", "slate", [(0.1, 0.11, 0.13), (0.2, 0.22, 0.25), (0.3, 0.32, 0.35), (0.42, 0.43, 0.45)],
            description="Layered dark blue-grey slate"),
    partial(stone, "sandstone", "sandstone", [(0.5, 0.35, 0.2), (0.65, 0.5, 0.32), (0.75, 0.62, 0.44),
                                              (0.85, 0.75, 0.58)], description="Stratified warm sandstone"),
    partial(stone, "limestone_rock", "rock", [(0.3, 0.29, 0.27), (0.5, 0.48, 0.45), (0.65, 0.63, 0.6),
                                              (0.78, 0.76, 0.73)], description="Eroded grey limestone rock face"),
    # marble
    partial(marble, "white_marble", WHITE_MARBLE, GREY_VEINS, description="Polished white Carrara marble, grey veins"),
    partial(marble, "black_marble", [(0.03, 0.03, 0.035), (0.06, 0.06, 0.065), (0.09, 0.09, 0.1),
                                     (0.12, 0.12, 0.13)], [(0.55, 0.45, 0.25), (0.75, 0.62, 0.35),
                                                           (0.85, 0.75, 0.5), (0.95, 0.9, 0.75)],
            direction=(2, 1), turbulence=0.45, network=0.7, description="Black marble with gold veins"),
    partial(marble, "green_marble", [(0.05, 0.18, 0.12), (0.1, 0.28, 0.2), (0.15, 0.36, 0.26), (0.2, 0.42, 0.3)],
            [(0.6, 0.7, 0.62), (0.75, 0.82, 0.76), (0.85, 0.9, 0.86), (0.95, 0.97, 0.95)], direction=(1, 1),
            turbulence=0.5, network=0.8, gloss=0.12, description="Dark green serpentine marble, pale veins"),
    # concrete
    partial(concrete, "smooth_concrete", "smooth", [(0.38, 0.37, 0.35), (0.5, 0.49, 0.47), (0.58, 0.57, 0.55),
                                                    (0.66, 0.65, 0.63)], description="Smooth cast concrete"),
    partial(concrete, "concrete_panels", "panels", [(0.42, 0.41, 0.4), (0.52, 0.51, 0.5), (0.6, 0.59, 0.57),
                                                    (0.68, 0.67, 0.65)],
            description="Formwork concrete panels with tie holes"),
    partial(concrete, "cracked_concrete", "cracked", [(0.3, 0.29, 0.27), (0.42, 0.41, 0.39), (0.52, 0.51, 0.49),
                                                      (0.6, 0.59, 0.57)], description="Old cracked concrete floor"),
    partial(concrete, "exposed_aggregate", "aggregate", [(0.35, 0.32, 0.28), (0.5, 0.47, 0.42), (0.62, 0.58, 0.52),
                                                         (0.72, 0.68, 0.62)],
            description="Exposed-aggregate concrete with pebbles"),
    partial(concrete, "asphalt", "asphalt", [(0.04, 0.04, 0.04), (0.1, 0.1, 0.1), (0.18, 0.18, 0.18),
                                            (0.3, 0.3, 0.3)], category="paving", description="Worn road asphalt"),
    # plaster
    partial(concrete, "white_stucco", "stucco", [(0.7, 0.68, 0.64), (0.8, 0.78, 0.74), (0.86, 0.85, 0.82),
                                                 (0.92, 0.91, 0.89)], category="plaster",
            description="Trowelled white stucco wall"),
    partial(concrete, "green_painted_plaster", "smooth", [(0.3, 0.45, 0.35), (0.38, 0.55, 0.43),
                                                          (0.45, 0.62, 0.5), (0.52, 0.68, 0.56)], category="plaster",
            description="Green painted plaster wall"),
    partial(concrete, "cracked_plaster", "cracked", [(0.6, 0.55, 0.48), (0.72, 0.67, 0.6), (0.8, 0.76, 0.7),
                                                     (0.86, 0.83, 0.78)], category="plaster",
            description="Old ochre plaster with hairline cracks"),
    # metal
    partial(metal, "brushed_steel", "brushed", [(0.45, 0.45, 0.46), (0.55, 0.55, 0.56), (0.62, 0.62, 0.63),
                                                (0.7, 0.7, 0.71)], gloss=0.25, description="Brushed stainless steel"),
    partial(metal, "hammered_copper", "hammered", [(0.45, 0.2, 0.1), (0.65, 0.35, 0.2), (0.8, 0.5, 0.32),
                                                   (0.9, 0.62, 0.45)], gloss=0.35, description="Hand-hammered copper"),
    partial(metal, "scratched_aluminium", "scratched", [(0.6, 0.61, 0.62), (0.7, 0.71, 0.72), (0.78, 0.79, 0.8),
                                                        (0.86, 0.87, 0.88)], gloss=0.3,
            description="Aluminium sheet with fine scratches"),
    partial(metal, "galvanized_steel", "spangle", [(0.45, 0.47, 0.48), (0.55, 0.57, 0.58), (0.65, 0.67, 0.68),
                                                   (0.72, 0.74, 0.75)], gloss=0.35,
            description="Hot-dip galvanized steel with zinc spangle"),
    partial(metal, "tread_plate", "tread", [(0.4, 0.4, 0.41), (0.5, 0.5, 0.51), (0.6, 0.6, 0.61), (0.68, 0.68, 0.69)],
            gloss=0.3, description="Aluminium tread plate with raised bars"),
    partial(metal, "brushed_gold", "brushed", [(0.6, 0.42, 0.12), (0.75, 0.56, 0.2), (0.85, 0.68, 0.32),
                                               (0.95, 0.8, 0.45)], gloss=0.2, description="Brushed gold"),
    # rusty and painted metal
    partial(rusty, "rusty_iron", description="Corroded bare iron sheet, rust patches over grey metal"),
    partial(rusty, "chipped_blue_paint", paint_rgb=(0.1, 0.25, 0.5), rust=0.35,
            description="Blue painted steel, chipped, rusting underneath"),
    partial(rusty, "rusted_red_paint", paint_rgb=(0.5, 0.08, 0.06), rust=0.5,
            description="Red painted metal door, rust breaking through"),
    partial(rusty, "heavy_rust", rust=0.85, description="Heavily rusted steel plate"),
    # fabric
    partial(fabric, "denim", [(0.05, 0.08, 0.18), (0.1, 0.16, 0.32), (0.2, 0.28, 0.45), (0.5, 0.55, 0.65)],
            threads=32, woven="twill", description="Indigo denim twill"),
    partial(fabric, "linen", [(0.55, 0.5, 0.42), (0.66, 0.61, 0.53), (0.74, 0.7, 0.62), (0.82, 0.78, 0.7)],
            threads=16, weave="plain", description="Natural linen, plain weave"),
    partial(fabric, "burlap", [(0.3, 0.22, 0.12), (0.45, 0.35, 0.2), (0.55, 0.44, 0.28), (0.62, 0.52, 0.35)],
            threads=12, woven="plain", fuzz=0.7, description="Coarse jute burlap"),
    partial(fabric, "cotton_canvas", [(0.3, 0.3, 0.22), (0.42, 0.42, 0.32), (0.5, 0.5, 0.4), (0.6, 0.6, 0.5)],
            threads=24, woven="basket", fuzz=0.4, description="Olive cotton canvas, basket weave"),
    partial(fabric, "red_corduroy", [(0.3, 0.03, 0.04), (0.5, 0.06, 0.07), (0.62, 0.12, 0.12), (0.72, 0.22, 0.2)],
            threads=8, weave="cord", fuzz=0.5, gloss=0.9, description="Red corduroy with soft vertical wales"),
    partial(carpet, "grey_carpet", [(0.2, 0.2, 0.22), (0.32, 0.32, 0.34), (0.42, 0.42, 0.44), (0.52, 0.52, 0.54)],
            description="Grey loop-pile carpet"),
    # leather
    partial(leather, "brown_leather", [(0.12, 0.06, 0.03), (0.25, 0.13, 0.06), (0.35, 0.2, 0.1), (0.45, 0.28, 0.15)],
            description="Brown pebbled leather"),
    partial(leather, "blue_leather", [(0.03, 0.06, 0.15), (0.06, 0.12, 0.28), (0.1, 0.18, 0.38), (0.16, 0.25, 0.46)],
            grain=32, gloss=0.35, creases=0.3, description="Fine-grain blue leather"),
    partial(leather, "black_leather", [(0.02, 0.02, 0.02), (0.05, 0.05, 0.05), (0.08, 0.08, 0.08), (0.12, 0.12, 0.12)],
            grain=16, gloss=0.3, creases=0.8, description="Creased black leather"),
    # ground
    partial(ground, "dry_dirt", "dirt", [(0.2, 0.14, 0.09), (0.35, 0.26, 0.18), (0.45, 0.35, 0.25), (0.55, 0.45, 0.34)],
            description="Dry dirt with small stones"),
    partial(ground, "sand_ripples", "sand", [(0.55, 0.45, 0.3), (0.68, 0.58, 0.42), (0.76, 0.67, 0.5),
                                             (0.84, 0.76, 0.6)], description="Wind-rippled beach sand"),
    partial(ground, "gravel", "gravel", [(0.2, 0.19, 0.18), (0.38, 0.36, 0.33), (0.55, 0.52, 0.48),
                                         (0.7, 0.67, 0.62)], description="Loose grey gravel"),
    partial(ground, "cracked_mud", "mud", [(0.2, 0.14, 0.09), (0.38, 0.28, 0.18), (0.5, 0.4, 0.28),
                                           (0.6, 0.5, 0.36)], description="Dried mud cracked into plates"),
    partial(ground, "forest_floor", "leaves", [(0.1, 0.07, 0.04), (0.35, 0.15, 0.05), (0.6, 0.35, 0.1),
                                               (0.7, 0.55, 0.2)], description="Fallen leaves on soil"),
    # terrazzo
    partial(terrazzo, "terrazzo_light", (0.85, 0.83, 0.8), [(0.2, 0.2, 0.2), (0.6, 0.3, 0.2), (0.5, 0.55, 0.6),
                                                            (0.9, 0.85, 0.75)], description="Light terrazzo"),
    partial(terrazzo, "terrazzo_dark", (0.18, 0.18, 0.19), [(0.85, 0.85, 0.83), (0.7, 0.5, 0.3), (0.3, 0.5, 0.45),
                                                            (0.95, 0.95, 0.95)], chips=32,
            description="Dark terrazzo with bright chips"),
    # plastic
    partial(plastic, "red_plastic", (0.6, 0.05, 0.04), kind="peel", description="Glossy red moulded plastic"),
    partial(plastic, "rubber_stud_mat", (0.06, 0.06, 0.06), kind="studs", gloss=0.6,
            description="Black rubber mat with round studs"),
    partial(plastic, "ribbed_plastic", (0.85, 0.85, 0.82), kind="ribbed", gloss=0.25,
            description="White ribbed plastic panel"),
    # paper and cork
    partial(paper, "cardboard", "cardboard", [(0.45, 0.33, 0.2), (0.55, 0.42, 0.27), (0.62, 0.49, 0.33),
                                              (0.7, 0.57, 0.4)], description="Brown corrugated cardboard"),
    partial(paper, "crumpled_paper", "crumpled", [(0.7, 0.7, 0.68), (0.8, 0.8, 0.78), (0.87, 0.87, 0.85),
                                                  (0.93, 0.93, 0.92)], description="Crumpled white paper"),
    partial(paper, "cork_board", "cork", [(0.35, 0.22, 0.12), (0.5, 0.34, 0.2), (0.62, 0.45, 0.28),
                                          (0.72, 0.56, 0.38)], description="Pressed cork board"),
]
