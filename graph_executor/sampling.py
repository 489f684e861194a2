"""Random draws of a graph's predicted parameters that stay close to its material.

Each predicted number is perturbed uniformly around the graph's authored value v by
±spread·(|v| + floor·(high − low)): proportional to the value, so a small authored warp stays
small, with a floor so zero values move too. Colours get a brightness factor and a small
per-channel shift; enums and bools flip now and then. A per-graph range in the graph's meta
replaces the perturbation by a uniform draw:

    "meta": {"sampling": {"spread": 0.2,                      # overrides SamplingConfig fields
                          "ranges": {"bricks.rows": [4, 12],  # float/int: [low, high]
                                     "mix.mode": ["multiply", "overlay"],    # enum: choices
                                     "tint.color": [[0.2, 0.1, 0.0], [0.5, 0.3, 0.2]]},
                          "fixed": ["warp.intensity"]}}       # always the authored value

Draws are deterministic for (graph, n, seed), and sample i does not depend on n.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from graph_executor.errors import GraphError
from graph_executor.ir import Graph
from graph_executor.schema import ParamKind, ParamSpec

ParamSet = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class SamplingConfig:
    """How far draws stray from the authored values (see the module docstring)."""

    spread: float = 0.2
    floor: float = 0.05
    color_spread: float = 0.12
    enum_flip: float = 0.1
    bool_flip: float = 0.1


@dataclass(frozen=True)
class _Rule:
    """How one predicted parameter is drawn: around `value`, from `range`, or kept fixed."""

    node: str
    spec: ParamSpec
    value: Any
    range: Any = None
    fixed: bool = False


def predicted_parameters(graph: Graph) -> list[tuple[str, ParamSpec]]:
    """(node, spec) of every predicted parameter, in graph order then schema order."""
    return [(n.name, spec) for n in graph.nodes.values() for spec in n.spec.params if spec.predicted]


def _sampling_meta(graph: Graph) -> dict:
    meta = graph.meta.get("sampling", {})
    if not isinstance(meta, dict):
        raise GraphError("meta 'sampling' must be an object")
    unknown = set(meta) - {"ranges", "fixed"} - {f.name for f in fields(SamplingConfig)}
    if unknown:
        raise GraphError(f"meta 'sampling' has unknown keys {sorted(unknown)}")
    for key in set(meta) - {"ranges", "fixed"}:
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise GraphError(f"meta sampling '{key}' must be a number in [0, 1], got {value!r}")
    return meta


def _split_key(key: Any, graph: Graph, what: str) -> tuple[str, ParamSpec]:
    if not isinstance(key, str) or "." not in key:
        raise GraphError(f"meta sampling {what} key {key!r} must read 'node.param'")
    node_name, pname = key.split(".", 1)
    if node_name not in graph.nodes:
        raise GraphError(f"meta sampling {what} names a missing node", node_name)
    try:
        spec = graph.nodes[node_name].spec.param(pname)
    except KeyError:
        raise GraphError(f"meta sampling {what} names an unknown parameter", node_name, pname) from None
    if not spec.predicted:
        raise GraphError(f"meta sampling {what} names a parameter that is not predicted", node_name, pname)
    return node_name, spec


def _check_range(spec: ParamSpec, node: str, rng: Any) -> Any:
    if spec.kind is ParamKind.ENUM:
        if not isinstance(rng, list) or not rng:
            raise GraphError("sampling range of an enum must be a non-empty list of choices", node, spec.name)
        return [spec.check(choice, node) for choice in rng]
    if spec.kind is ParamKind.BOOL:
        raise GraphError("bool parameters take no sampling range (use 'fixed' or bool_flip)", node, spec.name)
    if not isinstance(rng, list) or len(rng) != 2:
        raise GraphError(f"sampling range must be [low, high], got {rng!r}", node, spec.name)
    low, high = (spec.check(bound, node) for bound in rng)
    if np.any(np.asarray(low, dtype=float) > np.asarray(high, dtype=float)):
        raise GraphError(f"sampling range {rng!r} has low above high", node, spec.name)
    return [low, high]


def _rules(graph: Graph) -> tuple[list[_Rule], dict]:
    meta = _sampling_meta(graph)
    ranges: dict[tuple[str, str], Any] = {}
    raw_ranges = meta.get("ranges", {})
    if not isinstance(raw_ranges, dict):
        raise GraphError("meta sampling 'ranges' must be an object")
    for key, rng in raw_ranges.items():
        node_name, spec = _split_key(key, graph, "range")
        ranges[(node_name, spec.name)] = _check_range(spec, node_name, rng)
    raw_fixed = meta.get("fixed", [])
    if not isinstance(raw_fixed, list):
        raise GraphError("meta sampling 'fixed' must be a list of 'node.param'")
    fixed = set()
    for key in raw_fixed:
        node_name, spec = _split_key(key, graph, "fixed")
        fixed.add((node_name, spec.name))
    rules = [_Rule(node_name, spec, graph.nodes[node_name].params[spec.name],
                   ranges.get((node_name, spec.name)), (node_name, spec.name) in fixed)
             for node_name, spec in predicted_parameters(graph)]
    overrides = {k: v for k, v in meta.items() if k not in ("ranges", "fixed")}
    return rules, overrides


def _draw(rule: _Rule, rng: np.random.Generator, cfg: SamplingConfig) -> Any:
    spec, value = rule.spec, rule.value
    if rule.fixed:
        return value
    kind = spec.kind
    if kind is ParamKind.BOOL:
        return (not value) if rng.random() < cfg.bool_flip else value
    if kind is ParamKind.ENUM:
        if rule.range is not None:
            return rule.range[int(rng.integers(len(rule.range)))]
        others = [c for c in spec.choices if c != value]
        if others and rng.random() < cfg.enum_flip:
            return others[int(rng.integers(len(others)))]
        return value
    if rule.range is not None:
        low, high = (np.asarray(b, dtype=float) for b in rule.range)
        if kind is ParamKind.INT:
            return int(rng.integers(int(low), int(high) + 1))
        drawn = low + rng.random(low.shape) * (high - low)
    elif kind is ParamKind.COLOR:
        base = np.asarray(value, dtype=float)
        brightness = 1 + cfg.color_spread * 2 * (rng.random() * 2 - 1)
        drawn = base * brightness + cfg.color_spread * 0.5 * (rng.random(3) * 2 - 1)
    else:
        base = np.asarray(value, dtype=float)
        width = cfg.spread * (np.abs(base) + cfg.floor * (spec.high - spec.low))
        drawn = base + width * (rng.random(base.shape) * 2 - 1)
    drawn = np.clip(drawn, spec.low, spec.high)
    if kind is ParamKind.INT:
        return int(np.clip(np.rint(drawn), spec.low, spec.high))
    if kind is ParamKind.FLOAT:
        return float(drawn)
    return [float(v) for v in np.atleast_1d(drawn)]


def sample_parameters(graph: Graph, n: int, seed: int, config: SamplingConfig = SamplingConfig()) -> list[ParamSet]:
    """`n` parameter sets {node: {param: value}} covering every predicted parameter of `graph`."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rules, overrides = _rules(graph)
    cfg = replace(config, **overrides)
    draws: list[ParamSet] = []
    for i in range(n):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, i])
        sample: ParamSet = {}
        for rule in rules:
            sample.setdefault(rule.node, {})[rule.spec.name] = _draw(rule, rng, cfg)
        draws.append(sample)
    return draws


# ---------------------------------------------------------------------------------------------
# The same rules as tensor ops (online pre-training draws thousands of sets per second)
# ---------------------------------------------------------------------------------------------

_FIXED, _BOOL, _ENUM_FLIP, _ENUM_RANGE, _INT_RANGE, _RANGE, _COLOR, _AROUND = range(8)


class TensorSampler:
    """`sample_parameters`' rules as a few tensor ops over all n draws and every predicted scalar.

    `draw(n, generator)` returns (n, K) float64: one column per predicted scalar component, in
    `predicted_parameters` order (colours and vectors component by component), which is the
    policy tokenizer's slot order. Enums are choice indices, bools 0/1, ints integral. The random
    stream is torch's (a `torch.Generator` on any device), not numpy's, so draws differ sample by
    sample from `sample_parameters` but follow the same rules; `tests/test_online_data.py` checks
    supports and moments against it. Python-level `sample_parameters` costs ~0.3 ms per set of 100
    parameters; this is one kernel launch per op for the whole batch.
    """

    def __init__(self, graph: Graph, config: SamplingConfig = SamplingConfig()):
        rules, overrides = _rules(graph)
        cfg = replace(config, **overrides)
        self.graph = graph
        self.columns: list[tuple[str, str, int]] = []  # (node, param, component)
        mode, value, low, high, rlow, rhigh, width, group, choices, flip = ([] for _ in range(10))
        tables: list[list[int]] = []
        for p, rule in enumerate(rules):
            spec = rule.spec
            comps = spec.components
            raw = rule.value if comps > 1 else [rule.value]
            for c in range(comps):
                self.columns.append((rule.node, spec.name, c))
                v = raw[c]
                if spec.kind is ParamKind.ENUM:
                    v = spec.choices.index(v)
                lo, hi, table, prob = spec.low, spec.high, [], 0.0
                count = len(spec.choices)
                if rule.fixed:
                    m = _FIXED
                elif spec.kind is ParamKind.BOOL:
                    m, prob = _BOOL, cfg.bool_flip
                elif spec.kind is ParamKind.ENUM:
                    if rule.range is not None:
                        m, table = _ENUM_RANGE, [spec.choices.index(c_) for c_ in rule.range]
                    else:
                        m, prob = _ENUM_FLIP, cfg.enum_flip
                elif rule.range is not None:
                    m = _INT_RANGE if spec.kind is ParamKind.INT else _RANGE
                    bounds = [b if comps == 1 else b[c] for b in rule.range]
                    lo, hi = float(bounds[0]), float(bounds[1])
                elif spec.kind is ParamKind.COLOR:
                    m = _COLOR
                else:
                    m = _AROUND
                mode.append(m)
                value.append(float(v))  # bools 0/1, enums their choice index
                low.append(spec.low)
                high.append(spec.high)
                rlow.append(lo)
                rhigh.append(hi)
                width.append(cfg.spread * (abs(float(v)) + cfg.floor * (spec.high - spec.low)))
                group.append(p)
                choices.append(count)
                flip.append(prob)
                tables.append(table)
        self.is_int = [spec.kind is ParamKind.INT for _, spec in predicted_parameters(graph)
                       for _ in range(spec.components)]
        self.color_spread = cfg.color_spread
        self.num_params = len(rules)
        longest = max([len(t) for t in tables] + [1])
        f64 = dict(dtype=torch.float64)
        self._cpu = {
            "mode": torch.tensor(mode, dtype=torch.long), "value": torch.tensor(value, **f64),
            "low": torch.tensor(low, **f64), "high": torch.tensor(high, **f64),
            "rlow": torch.tensor(rlow, **f64), "rhigh": torch.tensor(rhigh, **f64),
            "width": torch.tensor(width, **f64), "group": torch.tensor(group, dtype=torch.long),
            "choices": torch.tensor(choices, dtype=torch.long), "flip": torch.tensor(flip, **f64),
            "is_int": torch.tensor(self.is_int, dtype=torch.bool),
            "table": torch.tensor([t + [0] * (longest - len(t)) for t in tables],
                                  dtype=torch.long).reshape(-1, longest),
            "table_len": torch.tensor([max(1, len(t)) for t in tables], dtype=torch.long),
        }
        self._on: dict[torch.device, dict[str, torch.Tensor]] = {}

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._on:
            self._on[device] = {k: v.to(device) for k, v in self._cpu.items()}
        return self._on[device]

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, K) float64 draws on the generator's device."""
        device = generator.device
        t = self._tensors(device)
        k = self.num_columns
        u = torch.rand(4, n, k, generator=generator, device=device, dtype=torch.float64)
        u_param = torch.rand(n, max(1, self.num_params), generator=generator, device=device,
                             dtype=torch.float64)[:, t["group"]]
        value, mode = t["value"].expand(n, k), t["mode"]
        # around the authored value (floats, ints, vectors), rounded for ints
        around = (value + t["width"] * (u[0] * 2 - 1)).clamp(t["low"], t["high"])
        around = torch.where(t["is_int"], around.round(), around)
        # uniform over a per-graph range
        ranged = t["rlow"] + u[0] * (t["rhigh"] - t["rlow"])
        int_ranged = torch.minimum(torch.floor(t["rlow"] + u[0] * (t["rhigh"] - t["rlow"] + 1)), t["rhigh"])
        # colour: a brightness factor shared by the three components plus a per-channel shift
        cs = self.color_spread
        color = value * (1 + cs * 2 * (u_param * 2 - 1)) + cs * 0.5 * (u[0] * 2 - 1)
        # bools and enums flip now and then; an enum flips to one of the other choices uniformly
        flips = u[1] < t["flip"]
        boolean = torch.where(flips, 1 - value, value)
        others = torch.floor(u[2] * (t["choices"] - 1).clamp(min=1)).clamp(max=(t["choices"] - 2).clamp(min=0))
        other = torch.where(others >= value, others + 1, others)
        enum_flip = torch.where(flips & (t["choices"] > 1), other, value)
        pick = torch.floor(u[3] * t["table_len"]).long().clamp(max=t["table"].shape[1] - 1)
        enum_range = t["table"].gather(1, pick.T).T.to(torch.float64) if k else value
        out = value.clone()
        for code, drawn in ((_BOOL, boolean), (_ENUM_FLIP, enum_flip), (_ENUM_RANGE, enum_range),
                            (_INT_RANGE, int_ranged), (_RANGE, ranged), (_COLOR, color), (_AROUND, around)):
            out = torch.where(mode == code, drawn, out)
        clipped = out.clamp(t["low"], t["high"])
        return torch.where((mode == _RANGE) | (mode == _COLOR) | (mode == _AROUND) | (mode == _INT_RANGE),
                           clipped, out)
