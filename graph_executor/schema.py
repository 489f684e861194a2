"""Declarative node-type schemas: the single source for validation, quantisation and docs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import torch

from graph_executor.errors import GraphError


@dataclass
class NodeContext:
    """What a node function may know besides its inputs and parameters (the node-function contract;
    built by the executor for every step)."""

    res: int
    batch: int
    device: torch.device
    seed: torch.Tensor  # (B,) int64: run seed mixed with the node's name; nodes mix in their own seed
    cache: dict

    @torch.compiler.disable  # per-run cache: kept out of compiled graphs so guards never see it
    def coords(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-centre coordinates in [0,1), each (1,1,H,W); x grows right, y grows down."""
        key = ("coords", self.res, self.device)
        if key not in self.cache:
            t = (torch.arange(self.res, device=self.device, dtype=torch.float32) + 0.5) / self.res
            self.cache[key] = (t.view(1, 1, 1, -1).expand(1, 1, self.res, self.res),
                               t.view(1, 1, -1, 1).expand(1, 1, self.res, self.res))
        return self.cache[key]


class ParamKind(str, Enum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    ENUM = "enum"
    COLOR = "color"
    VECTOR = "vector"


class PortKind(str, Enum):
    GRAY = "gray"
    COLOR = "color"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a node type.

    `low`/`high` bound scalars and every component of colours and vectors; `choices` names enum
    values; `size` is the component count of vectors (colours are always 3). `predicted` says
    whether the policy emits a token for it (seeds are not predicted). `differentiable` says
    whether gradient-based refinement (`matrl infer --refine`) may move it: None (the default)
    resolves to True for floats, colours and vectors and False for ints, bools and enums; a node
    sets False for a float whose effect goes through rounding, a threshold or a hash, where the
    gradient is zero or undefined (those are left to the discrete search).
    """

    name: str
    kind: ParamKind
    default: Any
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()
    size: int = 1
    predicted: bool = True
    doc: str = ""
    differentiable: bool | None = None

    def __post_init__(self):
        continuous = self.kind in (ParamKind.FLOAT, ParamKind.COLOR, ParamKind.VECTOR)
        if self.differentiable is None:
            object.__setattr__(self, "differentiable", continuous)
        elif self.differentiable and not continuous:
            raise ValueError(f"parameter {self.name!r}: a {self.kind.value} parameter cannot be differentiable")

    @property
    def components(self) -> int:
        if self.kind is ParamKind.COLOR:
            return 3
        if self.kind is ParamKind.VECTOR:
            return self.size
        return 1

    def random_value(self, rng) -> Any:
        """A uniform draw over the declared range (a `random.Random`); used by fuzzing and generators."""
        k = self.kind
        if k is ParamKind.BOOL:
            return rng.random() < 0.5
        if k is ParamKind.ENUM:
            return rng.choice(self.choices)
        if k is ParamKind.INT:
            return rng.randint(int(math.ceil(self.low)), int(math.floor(self.high)))
        if k is ParamKind.FLOAT:
            return rng.uniform(self.low, self.high)
        return [rng.uniform(self.low, self.high) for _ in range(self.components)]

    def check(self, value: Any, node: str) -> Any:
        """Validate a JSON value against this spec and return its canonical Python form."""
        k = self.kind
        if k is ParamKind.BOOL:
            if not isinstance(value, bool):
                raise GraphError(f"expected bool, got {type(value).__name__}", node, self.name)
            return value
        if k is ParamKind.ENUM:
            if not isinstance(value, str):
                raise GraphError(f"expected one of {list(self.choices)}, got {value!r}", node, self.name)
            if value not in self.choices:
                raise GraphError(f"unknown choice {value!r}; expected one of {list(self.choices)}", node, self.name)
            return value
        if k is ParamKind.INT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise GraphError(f"expected int, got {type(value).__name__}", node, self.name)
            self._check_range(value, node)
            return value
        if k is ParamKind.FLOAT:
            return self._check_number(value, node)
        if not isinstance(value, (list, tuple)) or len(value) != self.components:
            raise GraphError(f"expected a list of {self.components} numbers, got {value!r}", node, self.name)
        return [self._check_number(v, node) for v in value]

    def _check_number(self, value: Any, node: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GraphError(f"expected a number, got {type(value).__name__}", node, self.name)
        if not math.isfinite(value):
            raise GraphError(f"value {value} is not finite", node, self.name)
        self._check_range(value, node)
        return float(value)

    def _check_range(self, value: float, node: str) -> None:
        if not (self.low <= value <= self.high):
            raise GraphError(f"value {value} is outside [{self.low}, {self.high}]", node, self.name)


def P(name: str, kind: str, default: Any, low: float = 0.0, high: float = 1.0, *, choices=(),
      size: int = 1, predicted: bool = True, doc: str = "", differentiable: bool | None = None) -> ParamSpec:
    """Short constructor so node definitions read as declarative tables."""
    return ParamSpec(name, ParamKind(kind), default, float(low), float(high), tuple(choices), size,
                     predicted, doc, differentiable)


def seed_param() -> ParamSpec:
    return P("seed", "int", 0, 0, 9999, predicted=False, doc="random seed of this node")


@dataclass(frozen=True)
class NodeSpec:
    """A node type: typed input and output ports, parameters, and its batched torch function."""

    type: str
    category: str
    fn: Callable[..., dict]
    inputs: dict[str, PortKind] = field(default_factory=dict)
    outputs: dict[str, PortKind] = field(default_factory=dict)
    params: tuple[ParamSpec, ...] = ()
    optional_inputs: frozenset[str] = frozenset()
    doc: str = ""

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise KeyError(name)


NODE_TYPES: dict[str, NodeSpec] = {}


def node(type: str, category: str, *, inputs: dict[str, str] | None = None,
         outputs: dict[str, str] | None = None, params: list[ParamSpec] | tuple = (),
         optional: tuple[str, ...] = ()):
    """Register a batched node function under `type`; its docstring becomes the node's doc.

    The function is called as fn(ctx, inputs, params): inputs maps port -> (B,C,H,W) tensor (or
    None for an unconnected optional port), params maps name -> tensor with a leading batch axis.
    It returns a dict port -> tensor. Outputs must tile (wrap-around) seamlessly.
    """

    def register(fn):
        if type in NODE_TYPES:
            raise ValueError(f"node type {type!r} registered twice")
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"node type {type!r} repeats a parameter name")
        NODE_TYPES[type] = NodeSpec(
            type=type, category=category, fn=fn,
            inputs={k: PortKind(v) for k, v in (inputs or {}).items()},
            outputs={k: PortKind(v) for k, v in (outputs or {"out": "gray"}).items()},
            params=tuple(params), optional_inputs=frozenset(optional),
            doc=(fn.__doc__ or "").strip().split("\n")[0],
        )
        return fn

    return register
