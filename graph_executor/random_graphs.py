"""Seeded random graph structures from the node library, for structure diversity beyond the library.

A structure is composed the way material graphs usually are: a few gray generators, blended
into a height signal, passed through gray filters; basecolor colourises a signal (and may be
colour-filtered), roughness is a remapped signal, normal comes from height. Node types are
classified by their port signatures, so new node types join automatically. A candidate that is
degenerate at 64² is rejected and another is drawn; the result depends only on the seed and config.
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
_RESERVED = frozenset({"output", "normal_from_height", "blend", "blend_color", "levels"})


@dataclass(frozen=True)
class RandomGraphConfig:
    """Shape of random structures and how far their parameters stray from the defaults."""

    generators: tuple[int, int] = (2, 4)
    gray_filters: tuple[int, int] = (1, 4)
    color_filters: tuple[int, int] = (0, 1)
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
    return _Palette(generators, gray_filters, colorizers, color_filters)


def _param_value(spec: ParamSpec, rng: random.Random, randomness: float) -> Any:
    if spec.name == "seed":
        return rng.randint(int(spec.low), int(spec.high))
    if not spec.predicted or rng.random() >= randomness:
        return spec.default
    if spec.kind is ParamKind.COLOR:
        # Material-like colours: any hue, muted saturation.
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.9))
        return [min(spec.high, max(spec.low, c)) for c in rgb]
    return spec.random_value(rng)


class _Builder:
    """Accumulates nodes of one candidate structure as graph JSON."""

    def __init__(self, rng: random.Random, config: RandomGraphConfig):
        self.rng = rng
        self.config = config
        self.nodes: dict[str, dict] = {}

    def add(self, spec: NodeSpec, inputs: dict[str, str], params: dict[str, Any] | None = None) -> str:
        name = f"{spec.type}_{len(self.nodes)}"
        values = {p.name: _param_value(p, self.rng, self.config.param_randomness) for p in spec.params}
        values.update(params or {})
        self.nodes[name] = {"type": spec.type, "params": values, "inputs": inputs}
        return name

    def generator(self, palette: _Palette) -> str:
        spec = self.rng.choice(palette.generators)
        return f"{self.add(spec, {})}.{_gray_output(spec)}"

    def blend(self, foreground: str, background: str) -> str:
        spec = load_node_library()["blend"]
        mode = self.rng.choice(SAFE_BLEND_MODES)
        opacity = self.rng.uniform(0.3, 1.0)
        return self.add(spec, {"foreground": foreground, "background": background},
                        {"mode": mode, "opacity": opacity})

    def levels(self, source: str, out_low: float, out_high: float) -> str:
        spec = load_node_library()["levels"]
        return self.add(spec, {"in": source}, {"in_low": 0.0, "in_high": 1.0, "gamma": self.rng.uniform(0.6, 1.6),
                                               "out_low": out_low, "out_high": out_high})

    def filter(self, spec: NodeSpec, source: str, pool: list[str]) -> str:
        required = list(_required(spec))
        inputs = {required[0]: source}
        for port in required[1:]:
            inputs[port] = self.rng.choice(pool)
        return self.add(spec, inputs)


def _candidate(rng: random.Random, config: RandomGraphConfig, palette: _Palette, seed: int) -> dict:
    b = _Builder(rng, config)
    pool = [b.generator(palette) for _ in range(rng.randint(*config.generators))]
    height = pool[0]
    for other in pool[1:]:
        height = b.blend(other, height)
    if palette.gray_filters:
        for _ in range(rng.randint(*config.gray_filters)):
            height = b.filter(rng.choice(palette.gray_filters), height, pool)
    height = b.levels(height, rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0))
    lib = load_node_library()
    normal = b.add(lib["normal_from_height"], {"height": height}, {"intensity": rng.uniform(0.5, 6.0)})
    color_source = rng.choice([height, *pool])
    if palette.colorizers:
        spec = rng.choice(palette.colorizers)
        basecolor = b.add(spec, {next(iter(_required(spec))): color_source})
    else:
        basecolor = b.levels(color_source, rng.uniform(0.05, 0.4), rng.uniform(0.5, 0.95))
    for _ in range(rng.randint(*config.color_filters) if palette.color_filters else 0):
        spec = rng.choice(palette.color_filters)
        basecolor = b.add(spec, {next(iter(_required(spec))): basecolor})
    low = rng.uniform(0.1, 0.6)
    roughness = b.levels(rng.choice(pool), low, min(1.0, low + rng.uniform(0.1, 0.4)))
    b.nodes["output"] = {"type": "output", "params": {},
                         "inputs": {"basecolor": basecolor, "normal": normal, "roughness": roughness, "height": height}}
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
