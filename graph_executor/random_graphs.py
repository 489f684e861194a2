"""Seeded random graph structures from the node library, shaped like the authored ones.

A random structure follows the recipe the bundled library's graphs share (`tools/library_recipes.py`),
with every choice drawn: a few generators (noises, patterns) blended - some through masks - and
filtered into a height signal; a colour base (a gradient map of a signal) with masked colour
variations (HSL-shifted copies blended in through noise masks), an optional grime layer in the
cavities and ambient occlusion multiplied in; roughness (and sometimes metallic) remapped from the
signals; normal from height. Node types are classified by their port signatures, so new node
types join automatically.

The default config matches the library's shape (seeds 1000-1099 against the 71 library graphs,
`tests/test_random_graphs.py`): median 29 nodes (library 30; quartiles 25-32 vs 25-34), median
depth 11 (library 10; the tokenizer's longest path from a source), blend/blend_color/levels 42.9%
of the nodes (library 42.4%), a masked blend in every graph (library: every graph), 53 node types
(library 55). The first generator made 13 nodes at depth 8 (generators -> blends -> filters ->
output, nothing else): a policy pre-trained on those saw neither masks nor colour layers, which
every authored graph has.

A candidate that is degenerate at 64² is rejected and another is drawn; the result depends only
on the seed and config.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, field
from typing import Any

from graph_executor.degeneracy import graph_degeneracy
from graph_executor.errors import GraphError
from graph_executor.ir import Graph, parse_graph
from graph_executor.schema import NodeSpec, ParamKind, ParamSpec, PortKind
from graph_executor.registry import load_node_library

SAFE_BLEND_MODES = ("copy", "add", "multiply", "screen", "overlay", "darken", "lighten", "soft_light")
# Wired explicitly (or not suited to random wiring), so never drawn as generic steps.
_RESERVED = frozenset({"output", "normal_from_height", "blend", "blend_color", "levels", "ambient_occlusion",
                       "uniform_color", "uniform_gray"})
# Colour filters that make a variation of a colour (the library's "mottle" layers use hsl).
_VARIATIONS = ("hsl", "tint", "levels_color")
# Generators the library uses for masks: smooth noises.
_MASK_NOISES = ("value_fbm", "perlin_fbm", "clouds")


@dataclass(frozen=True)
class RandomGraphConfig:
    """Shape of random structures and how far their parameters stray from the defaults.

    Ranges are inclusive (low, high) counts; chances are per structure (per blend for masks).
    """

    generators: tuple[int, int] = (2, 4)  # signals blended into the height
    gray_filters: tuple[int, int] = (1, 3)  # generic gray filters in the height chain
    color_filters: tuple[int, int] = (0, 1)  # generic colour filters on the basecolor
    color_layers: tuple[int, int] = (1, 3)  # masked colour variations over the colour base
    mask_chance: float = 0.5  # a height blend goes through a mask
    second_color_chance: float = 0.35  # a second coloured region (uniform colour) mixed in through a mask
    grime_chance: float = 0.6  # dark grime in the cavities, broken up by clouds
    occlusion_chance: float = 0.8  # ambient occlusion multiplied onto the basecolor
    roughness_layers: tuple[int, int] = (1, 2)  # signals blended into the roughness
    metallic_chance: float = 0.15
    param_randomness: float = 0.35  # chance that a parameter is drawn over its range, not left at default
    max_attempts: int = 24
    check_res: int = 64
    exclude: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class _Palette:
    """Node types of the library grouped by what they can do in a structure."""

    generators: list[NodeSpec]
    gray_filters: list[NodeSpec]
    colorizers: list[NodeSpec]
    color_filters: list[NodeSpec]
    mask_noises: list[NodeSpec]
    variations: list[NodeSpec]


def _required(spec: NodeSpec) -> dict[str, PortKind]:
    return {p: k for p, k in spec.inputs.items() if p not in spec.optional_inputs}


def _gray_output(spec: NodeSpec) -> str | None:
    return next((p for p, k in spec.outputs.items() if k is PortKind.GRAY), None)


def _palette(exclude: frozenset[str]) -> _Palette:
    generators, gray_filters, colorizers, color_filters = [], [], [], []
    for spec in sorted(load_node_library().values(), key=lambda s: s.type):
        if spec.type in _RESERVED or spec.type in exclude:
            continue
        required = _required(spec)
        out = spec.outputs.get("out")
        first = next(iter(required.values()), None)
        if not required and _gray_output(spec) is not None:
            generators.append(spec)
        elif out is PortKind.GRAY and first is PortKind.GRAY:
            gray_filters.append(spec)
        elif out is PortKind.COLOR and first is PortKind.GRAY and len(required) == 1:
            colorizers.append(spec)
        elif out is PortKind.COLOR and first is PortKind.COLOR and len(required) == 1:
            color_filters.append(spec)
    if not generators:
        raise GraphError("the node library has no generator node types")
    mask_noises = [s for s in generators if s.type in _MASK_NOISES] or generators
    variations = [s for s in color_filters if s.type in _VARIATIONS] or color_filters
    return _Palette(generators, gray_filters, colorizers, color_filters, mask_noises, variations)


def _param_value(spec: ParamSpec, rng: random.Random, randomness: float) -> Any:
    if spec.name == "seed":
        return rng.randint(int(spec.low), int(spec.high))
    if not spec.predicted or rng.random() >= randomness:
        return spec.default
    if spec.kind is ParamKind.COLOR:
        return _material_color(spec, rng)
    return spec.random_value(rng)


def _material_color(spec: ParamSpec, rng: random.Random) -> list[float]:
    """Material-like colours: any hue, muted saturation."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.9))
    return [min(spec.high, max(spec.low, c)) for c in rgb]


class _Builder:
    """Accumulates nodes of one candidate structure as graph JSON."""

    def __init__(self, rng: random.Random, config: RandomGraphConfig, palette: _Palette):
        self.rng = rng
        self.config = config
        self.palette = palette
        self.lib = load_node_library()
        self.nodes: dict[str, dict] = {}

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def count(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    def add(self, spec: NodeSpec, inputs: dict[str, str], params: dict[str, Any] | None = None) -> str:
        name = f"{spec.type}_{len(self.nodes)}"
        values = {p.name: _param_value(p, self.rng, self.config.param_randomness) for p in spec.params}
        values.update(params or {})
        self.nodes[name] = {"type": spec.type, "params": values, "inputs": inputs}
        return name

    def generator(self, choices: list[NodeSpec] | None = None) -> str:
        """A generator's output; of a multi-output pattern (bricks: height, mask, random) any gray port."""
        spec = self.rng.choice(choices or self.palette.generators)
        port = self.rng.choice([p for p, k in spec.outputs.items() if k is PortKind.GRAY])
        return f"{self.add(spec, {})}.{port}"

    def blend(self, foreground: str, background: str, mask: str | None = None, mode: str | None = None) -> str:
        inputs = {"foreground": foreground, "background": background, **({"mask": mask} if mask else {})}
        return self.add(self.lib["blend"], inputs, {"mode": mode or self.rng.choice(SAFE_BLEND_MODES),
                                                    "opacity": self.rng.uniform(0.3, 1.0)})

    def blend_color(self, foreground: str, background: str, mask: str | None, mode: str, opacity: float) -> str:
        inputs = {"foreground": foreground, "background": background, **({"mask": mask} if mask else {})}
        return self.add(self.lib["blend_color"], inputs, {"mode": mode, "opacity": opacity})

    def levels(self, source: str, out_low: float, out_high: float, in_low: float = 0.0, in_high: float = 1.0) -> str:
        return self.add(self.lib["levels"], {"in": source},
                        {"in_low": in_low, "in_high": in_high, "gamma": self.rng.uniform(0.6, 1.6),
                         "out_low": out_low, "out_high": out_high})

    def filter(self, spec: NodeSpec, source: str, pool: list[str]) -> str:
        required = list(_required(spec))
        inputs = {required[0]: source}
        for port in required[1:]:
            inputs[port] = self.rng.choice(pool)
        return self.add(spec, inputs)

    def mask(self, pool: list[str]) -> str:
        """A mask as the library makes them: a smooth noise, or a signal cut by levels."""
        if self.chance(0.6) or not pool:
            return self.generator(self.palette.mask_noises)
        low = self.rng.uniform(0.2, 0.6)
        source = self.rng.choice(pool)
        return self.levels(source, 0.0, 1.0, in_low=low, in_high=min(1.0, low + self.rng.uniform(0.1, 0.4)))

    def color(self, rgb: list[float] | None = None) -> str:
        spec = self.lib["uniform_color"]
        return self.add(spec, {}, {"color": rgb or _material_color(spec.param("color"), self.rng)})


def _height(b: _Builder, pool: list[str]) -> str:
    """Generators blended (some through masks) and filtered, normalised by levels."""
    height = pool[0]
    for other in pool[1:]:
        height = b.blend(other, height, b.mask(pool) if b.chance(b.config.mask_chance) else None)
    for _ in range(b.count(b.config.gray_filters) if b.palette.gray_filters else 0):
        height = b.filter(b.rng.choice(b.palette.gray_filters), height, pool)
        if b.chance(0.3):
            height = b.levels(height, 0.0, 1.0, in_low=b.rng.uniform(0.0, 0.2), in_high=b.rng.uniform(0.8, 1.0))
    return b.levels(height, b.rng.uniform(0.0, 0.2), b.rng.uniform(0.8, 1.0))


def _basecolor(b: _Builder, pool: list[str], height: str) -> str:
    """Colour base, masked colour variations, a second region, grime and occlusion."""
    source = b.rng.choice([height, *pool])
    if b.chance(0.5) and len(pool) > 1:
        source = b.blend(b.rng.choice(pool), source, mode=b.rng.choice(("overlay", "soft_light", "multiply")))
    if b.palette.colorizers:
        spec = b.rng.choice(b.palette.colorizers)
        albedo = b.add(spec, {next(iter(_required(spec))): source})
    else:  # a library without colourising nodes: a gray basecolor is legal
        albedo = b.levels(source, b.rng.uniform(0.05, 0.4), b.rng.uniform(0.5, 0.95))
    if b.palette.variations:
        for _ in range(b.count(b.config.color_layers)):
            shifted = b.add(b.rng.choice(b.palette.variations), {"in": albedo})
            albedo = b.blend_color(shifted, albedo, b.mask(pool), "copy", b.rng.uniform(0.2, 0.7))
    if b.chance(b.config.second_color_chance):
        region = b.color()
        if b.palette.variations and b.chance(0.5):
            region = b.blend_color(b.add(b.rng.choice(b.palette.variations), {"in": region}), region,
                                   b.mask(pool), "copy", b.rng.uniform(0.3, 0.7))
        albedo = b.blend_color(region, albedo, b.mask(pool), "copy", b.rng.uniform(0.5, 1.0))
    for _ in range(b.count(b.config.color_filters) if b.palette.color_filters else 0):
        spec = b.rng.choice(b.palette.color_filters)
        albedo = b.filter(spec, albedo, pool)
    if b.chance(b.config.grime_chance):
        cavity = b.add(b.lib["invert"], {"in": height}) if "invert" in b.lib else height
        dirt = b.blend(b.generator(b.palette.mask_noises), cavity, mode="multiply")
        albedo = b.blend_color(b.color([b.rng.uniform(0.05, 0.2)] * 3), albedo, dirt, "multiply",
                               b.rng.uniform(0.3, 0.8))
    if b.chance(b.config.occlusion_chance):
        occlusion = b.add(b.lib["ambient_occlusion"], {"height": height})
        albedo = b.blend_color(f"{occlusion}.out", albedo, None, "multiply", b.rng.uniform(0.2, 0.7))
    return albedo


def _roughness(b: _Builder, pool: list[str], height: str) -> str:
    signal = b.rng.choice(pool)
    for _ in range(b.count(b.config.roughness_layers) - 1):
        signal = b.blend(b.rng.choice([height, *pool]), signal)
    low = b.rng.uniform(0.1, 0.6)
    return b.levels(signal, low, min(1.0, low + b.rng.uniform(0.1, 0.4)))


def _candidate(rng: random.Random, config: RandomGraphConfig, palette: _Palette, seed: int) -> dict:
    b = _Builder(rng, config, palette)
    pool = [b.generator() for _ in range(b.count(config.generators))]
    height = _height(b, pool)
    normal = b.add(b.lib["normal_from_height"], {"height": height}, {"intensity": rng.uniform(0.5, 6.0)})
    basecolor = _basecolor(b, pool, height)
    maps = {"basecolor": basecolor, "normal": normal, "roughness": _roughness(b, pool, height), "height": height}
    if b.chance(config.metallic_chance):
        maps["metallic"] = b.levels(b.mask(pool), 0.0, rng.uniform(0.5, 1.0))
    b.nodes["output"] = {"type": "output", "params": {}, "inputs": maps}
    return {"name": f"random_{seed}", "category": "random",
            "meta": {"description": "random structure", "generator_seed": seed}, "nodes": b.nodes}


def random_graph(seed: int, config: RandomGraphConfig = RandomGraphConfig()) -> Graph:
    """A valid structure that is non-degenerate at its own parameters; deterministic for (seed, config)."""
    palette = _palette(config.exclude)
    last_reason = None
    for attempt in range(config.max_attempts):
        rng = random.Random(f"matrl.random_graph/{seed}/{attempt}")
        graph = parse_graph(_candidate(rng, config, palette, seed))
        last_reason = graph_degeneracy(graph, res=config.check_res, seed=seed)[0]
        if last_reason is None:
            return graph
    raise GraphError(f"no non-degenerate random structure for seed {seed} in {config.max_attempts} "
                     f"attempts (last: {last_reason})")


def random_graphs(count: int, seed: int = 0, config: RandomGraphConfig = RandomGraphConfig()) -> list[Graph]:
    """`count` random structures from consecutive seeds."""
    return [random_graph(seed + i, config) for i in range(count)]
