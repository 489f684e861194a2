"""Linearise a material graph for the policy, and map its parameters to and from value tokens.

A graph becomes three sequences, as in the paper (§3):
  * nodes: one entry per node in topological order, `(type id, depth)`; depth is the longest path
    from a source (generator) node, so sources are 0 and the output node is deepest;
  * edges: `(source node, source port, target node, target port)`, plus an (N, N) relation matrix
    (self / direct input / direct consumer / ancestor / descendant / unrelated) the node encoder
    turns into attention biases;
  * slots: one per predicted scalar, node by node, parameter by parameter in schema order, component
    by component (a colour is 3 slots, a vector `size` slots). Each slot takes one of 128 value
    tokens; `masks` (slots x 128) admits only the valid ones.

Value tokens per kind (`VALUE_BINS` = 128):
  * float / colour / vector component: 128 equal bins over [low, high], dequantised at bin centres
    `low + (q + 0.5) / 128 * (high - low)`; error at most half a bin;
  * int with at most 128 values: token = value - low, exact; the rest are masked;
  * int with more values: 128 equal bins over the integer range, dequantised to the integer at the
    bin centre, which re-quantises to the same bin;
  * bool: 0 = False, 1 = True; enum: index into the schema's `choices`.

Ids of node types and parameters come from a `Vocabulary` built from the schema registry (sorted
names, 0 reserved for padding), so they are stable for a given node library. A checkpoint stores
its vocabulary (`Vocabulary.to_dict`); pass it back to keep ids fixed when the library grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from graph_executor.errors import GraphError
from graph_executor.ir import Graph
from graph_executor.schema import ParamKind, ParamSpec
from graph_executor.registry import load_node_library

VALUE_BINS = 128
PAD_ID = 0

# Relation of node j (column) to node i (row) in `GraphTokenizer.relations`; 0 is padding.
REL_PAD, REL_SELF, REL_INPUT, REL_CONSUMER, REL_ANCESTOR, REL_DESCENDANT, REL_UNRELATED = range(7)
NUM_RELATIONS = 7


# ---------------------------------------------------------------------------------------------
# Per-scalar codec
# ---------------------------------------------------------------------------------------------

def _int_range(spec: ParamSpec) -> tuple[int, int]:
    return int(math.ceil(spec.low)), int(math.floor(spec.high))


def valid_token_count(spec: ParamSpec) -> int:
    """How many of the 128 tokens are meaningful for one scalar of this parameter."""
    if spec.kind is ParamKind.BOOL:
        return 2
    if spec.kind is ParamKind.ENUM:
        if not 1 <= len(spec.choices) <= VALUE_BINS:
            raise GraphError(f"an enum needs 1..{VALUE_BINS} choices, has {len(spec.choices)}", None, spec.name)
        return len(spec.choices)
    if spec.kind is ParamKind.INT:
        low, high = _int_range(spec)
        return min(high - low + 1, VALUE_BINS)
    return VALUE_BINS if spec.high > spec.low else 1


def quantise(spec: ParamSpec, value: Any) -> int:
    """One scalar (a float, int, bool, enum name, or one colour/vector component) -> its token."""
    kind = spec.kind
    if kind is ParamKind.BOOL:
        return int(bool(value))
    if kind is ParamKind.ENUM:
        return spec.choices.index(value)
    if kind is ParamKind.INT:
        low, high = _int_range(spec)
        count = high - low + 1
        if count <= VALUE_BINS:
            return int(value) - low
        return min(int((int(value) - low + 0.5) * VALUE_BINS // count), VALUE_BINS - 1)
    width = spec.high - spec.low
    if width <= 0:
        return 0
    return min(max(int(math.floor((float(value) - spec.low) / width * VALUE_BINS)), 0), VALUE_BINS - 1)


def dequantise(spec: ParamSpec, token: int) -> Any:
    """A token -> the scalar it stands for (bin centre for continuous kinds)."""
    kind = spec.kind
    if kind is ParamKind.BOOL:
        return bool(token)
    if kind is ParamKind.ENUM:
        return spec.choices[token]
    if kind is ParamKind.INT:
        low, high = _int_range(spec)
        count = high - low + 1
        if count <= VALUE_BINS:
            return low + int(token)
        return low + int((token + 0.5) * count // VALUE_BINS)
    width = spec.high - spec.low
    if width <= 0:
        return float(spec.low)
    return spec.low + (token + 0.5) / VALUE_BINS * width


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Vocabulary:
    """Ids for node types and for (node type, parameter) pairs; id 0 is padding in both."""

    node_types: tuple[str, ...]
    params: tuple[str, ...]  # "type.param"
    max_components: int

    @classmethod
    def from_registry(cls) -> "Vocabulary":
        registry = load_node_library()
        types = tuple(sorted(registry))
        params = tuple(sorted(f"{t}.{p.name}" for t in types for p in registry[t].params if p.predicted))
        comps = max([p.components for t in types for p in registry[t].params] + [1])
        return cls(types, params, comps)

    @property
    def num_node_types(self) -> int:
        return len(self.node_types) + 1

    @property
    def num_params(self) -> int:
        return len(self.params) + 1

    def node_type_id(self, type_name: str, node: str | None = None) -> int:
        try:
            return self._type_index[type_name]
        except KeyError:
            raise GraphError(f"node type {type_name!r} is not in the policy's vocabulary "
                             f"(the vocabulary predates it)", node) from None

    def param_id(self, type_name: str, param: str, node: str | None = None) -> int:
        try:
            return self._param_index[f"{type_name}.{param}"]
        except KeyError:
            raise GraphError(f"parameter of node type {type_name!r} is not in the policy's vocabulary",
                             node, param) from None

    @cached_property
    def _type_index(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.node_types)}

    @cached_property
    def _param_index(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.params)}

    def to_dict(self) -> dict:
        return {"node_types": list(self.node_types), "params": list(self.params),
                "max_components": self.max_components}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Vocabulary":
        return cls(tuple(data["node_types"]), tuple(data["params"]), int(data["max_components"]))


# ---------------------------------------------------------------------------------------------
# Graph tokenizer
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One predicted scalar: component `component` of parameter `param` of node `node`."""

    index: int
    node: str
    node_index: int
    param: str
    component: int
    spec: ParamSpec
    param_id: int
    valid_tokens: int


@dataclass(frozen=True)
class Edge:
    source: str
    source_port: str
    target: str
    target_port: str


@dataclass(frozen=True)
class GraphStructure:
    """The tensors the policy needs for one graph (unbatched); see `policy.batching.collate`."""

    node_types: torch.Tensor      # (N,) long, vocabulary ids
    node_depth: torch.Tensor      # (N,) long
    relations: torch.Tensor       # (N, N) long, REL_* codes
    slot_node: torch.Tensor       # (S,) long, index into the node sequence
    slot_param: torch.Tensor      # (S,) long, vocabulary ids of (type, param)
    slot_component: torch.Tensor  # (S,) long
    token_masks: torch.Tensor     # (S, 128) bool

    @property
    def num_nodes(self) -> int:
        return int(self.node_types.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.slot_node.shape[0])


class GraphTokenizer:
    """Linearisation and value tokens of one graph structure (parameter values do not matter)."""

    def __init__(self, graph: Graph, vocab: Vocabulary | None = None):
        self.graph = graph
        self.vocab = vocab or Vocabulary.from_registry()
        self.nodes: list[str] = list(graph.nodes)
        index = {name: i for i, name in enumerate(self.nodes)}
        self.node_type_ids = [self.vocab.node_type_id(graph.nodes[n].type, n) for n in self.nodes]
        self.edges: list[Edge] = [Edge(ref.node, ref.port, n, port)
                                  for n in self.nodes for port, ref in graph.nodes[n].inputs.items()]
        parents = [sorted({index[e.source] for e in self.edges if e.target == n}) for n in self.nodes]
        depth: list[int] = []
        for i in range(len(self.nodes)):
            depth.append(1 + max((depth[p] for p in parents[i]), default=-1))
        self.node_depth = depth
        self.relations = _relations(parents)
        self.slots: list[Slot] = []
        for i, name in enumerate(self.nodes):
            node = graph.nodes[name]
            for spec in node.spec.params:
                if not spec.predicted:
                    continue
                pid = self.vocab.param_id(node.type, spec.name, name)
                if spec.components > self.vocab.max_components:
                    raise GraphError(f"{spec.components} components exceed the vocabulary's "
                                     f"{self.vocab.max_components}", name, spec.name)
                count = valid_token_count(spec)
                for c in range(spec.components):
                    self.slots.append(Slot(len(self.slots), name, i, spec.name, c, spec, pid, count))
        masks = torch.zeros(len(self.slots), VALUE_BINS, dtype=torch.bool)
        for slot in self.slots:
            masks[slot.index, :slot.valid_tokens] = True
        self.masks = masks
        self._valid = np.array([s.valid_tokens for s in self.slots], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def edge_index(self) -> torch.Tensor:
        """(2, E) long: source and target node indices of every edge."""
        index = {name: i for i, name in enumerate(self.nodes)}
        return torch.tensor([[index[e.source] for e in self.edges], [index[e.target] for e in self.edges]],
                            dtype=torch.long).reshape(2, len(self.edges))

    def structure(self) -> GraphStructure:
        return GraphStructure(
            node_types=torch.tensor(self.node_type_ids, dtype=torch.long),
            node_depth=torch.tensor(self.node_depth, dtype=torch.long),
            relations=self.relations.clone(),
            slot_node=torch.tensor([s.node_index for s in self.slots], dtype=torch.long),
            slot_param=torch.tensor([s.param_id for s in self.slots], dtype=torch.long),
            slot_component=torch.tensor([s.component for s in self.slots], dtype=torch.long),
            token_masks=self.masks.clone(),
        )

    def tokenize(self, param_set: Mapping[str, Mapping[str, Any]] | None = None) -> list[int]:
        """`{node: {param: value}}` (missing values: the graph's own) -> one token per slot.

        Values are validated against the schema; non-predicted parameters (seeds) may be present
        and are not encoded.
        """
        param_set = param_set or {}
        self.graph.check_overrides(param_set)
        tokens: list[int] = []
        checked: dict[tuple[str, str], Any] = {}
        for slot in self.slots:
            key = (slot.node, slot.param)
            if key not in checked:
                raw = param_set.get(slot.node, {}).get(slot.param, self.graph.nodes[slot.node].params[slot.param])
                checked[key] = slot.spec.check(raw, slot.node)
            value = checked[key]
            if slot.spec.kind in (ParamKind.COLOR, ParamKind.VECTOR):
                value = value[slot.component]
            tokens.append(quantise(slot.spec, value))
        return tokens

    def detokenize(self, tokens: Sequence[int] | torch.Tensor | np.ndarray) -> dict[str, dict[str, Any]]:
        """One token per slot -> `{node: {param: value}}` of the predicted parameters (JSON types)."""
        return self.detokenize_batch(np.asarray(_as_numpy(tokens)).reshape(1, -1))[0]

    def detokenize_batch(self, tokens: Sequence[Sequence[int]] | torch.Tensor | np.ndarray
                         ) -> list[dict[str, dict[str, Any]]]:
        """(B, S) tokens -> B parameter sets (what `Plan.stack` takes); invalid tokens raise GraphError."""
        array = np.asarray(_as_numpy(tokens))
        if array.ndim != 2:
            raise GraphError(f"expected (batch, {len(self.slots)}) tokens, got shape {array.shape}")
        self._check_tokens(array)
        out: list[dict[str, dict[str, Any]]] = [{} for _ in range(array.shape[0])]
        for slot in self.slots:
            column = _dequantise_column(slot.spec, array[:, slot.index].astype(np.int64))
            multi = slot.spec.kind in (ParamKind.COLOR, ParamKind.VECTOR)
            for params, value in zip(out, column):
                node_params = params.setdefault(slot.node, {})
                if multi:
                    node_params.setdefault(slot.param, []).append(value)
                else:
                    node_params[slot.param] = value
        return out

    def invalid_rows(self, tokens: np.ndarray) -> np.ndarray:
        """(B,) bool: the rows of (B, S) tokens that `detokenize` would refuse (a token outside its
        slot's valid range). One vectorised comparison, so a batch is screened without Python loops."""
        array = np.asarray(tokens)
        return ((array < 0) | (array >= self._valid[None, :])).any(1)

    def param_columns(self, tokens: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """(B, S) valid tokens -> `{node: {param: column}}` of the predicted parameters, vectorised.

        The fast twin of `detokenize_batch` for executors: each column holds what `Plan.stack`
        would make of the dequantised values — float64 for floats (B,) and colours/vectors (B, K),
        int64 for ints and enum indices, bool for bools — so `Plan.stack_columns(columns)` equals
        `Plan.stack(detokenize_batch(tokens))` exactly, without B Python dicts (a 102-parameter
        graph: ~0.6 ms per sample through dicts and per-sample validation, µs per batch here).
        Invalid tokens raise GraphError naming the first culprit, as `detokenize_batch` does.
        """
        array = np.asarray(_as_numpy(tokens))
        if array.ndim != 2:
            raise GraphError(f"expected (batch, {len(self.slots)}) tokens, got shape {array.shape}")
        self._check_tokens(array)
        out: dict[str, dict[str, np.ndarray]] = {}
        pending: dict[tuple[str, str], list[np.ndarray]] = {}
        for slot in self.slots:
            column = _dequantise_array(slot.spec, array[:, slot.index].astype(np.int64))
            if slot.spec.kind in (ParamKind.COLOR, ParamKind.VECTOR):
                pending.setdefault((slot.node, slot.param), []).append(column)
            else:
                out.setdefault(slot.node, {})[slot.param] = column
        for (node, param), parts in pending.items():
            out.setdefault(node, {})[param] = np.stack(parts, 1)
        return out

    def _check_tokens(self, array: np.ndarray) -> np.ndarray:
        if array.shape[1] != len(self.slots):
            raise GraphError(f"expected {len(self.slots)} tokens (one per slot) for graph "
                             f"'{self.graph.name}', got {array.shape[1]}")
        bad = (array < 0) | (array >= self._valid[None, :])
        if bad.any():
            b, s = map(int, np.argwhere(bad)[0])
            slot = self.slots[s]
            raise GraphError(f"token {int(array[b, s])} at slot {s} is invalid; this slot admits "
                             f"0..{slot.valid_tokens - 1}", slot.node, slot.param)
        return array


def _dequantise_column(spec: ParamSpec, tokens: np.ndarray) -> list:
    """`dequantise` for a column of tokens at once (same results, as Python scalars)."""
    kind = spec.kind
    if kind is ParamKind.BOOL:
        return (tokens == 1).tolist()
    if kind is ParamKind.ENUM:
        return [spec.choices[t] for t in tokens.tolist()]
    if kind is ParamKind.INT:
        low, high = _int_range(spec)
        count = high - low + 1
        if count <= VALUE_BINS:
            return (low + tokens).tolist()
        return (low + ((tokens + 0.5) * count // VALUE_BINS).astype(np.int64)).tolist()
    width = spec.high - spec.low
    if width <= 0:
        return [float(spec.low)] * len(tokens)
    return (spec.low + (tokens + 0.5) / VALUE_BINS * width).tolist()


def _dequantise_array(spec: ParamSpec, tokens: np.ndarray) -> np.ndarray:
    """`_dequantise_column` as a numpy array in the form `Plan.stack` tensors are made from:
    bool, int64 (ints and enum indices) or float64 (same arithmetic, so the same values)."""
    kind = spec.kind
    if kind is ParamKind.BOOL:
        return tokens == 1
    if kind is ParamKind.ENUM:
        return tokens.astype(np.int64)
    if kind is ParamKind.INT:
        low, high = _int_range(spec)
        count = high - low + 1
        if count <= VALUE_BINS:
            return low + tokens
        return low + ((tokens + 0.5) * count // VALUE_BINS).astype(np.int64)
    width = spec.high - spec.low
    if width <= 0:
        return np.full(len(tokens), float(spec.low))
    return spec.low + (tokens + 0.5) / VALUE_BINS * width


def _as_numpy(tokens) -> Any:
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    return tokens


def _relations(parents: list[list[int]]) -> torch.Tensor:
    """(N, N) REL_* codes from each node's direct inputs (nodes in topological order)."""
    n = len(parents)
    ancestors = np.zeros((n, n), dtype=bool)
    for i, ps in enumerate(parents):
        for p in ps:
            ancestors[i, p] = True
            ancestors[i] |= ancestors[p]
    direct = np.zeros((n, n), dtype=bool)
    for i, ps in enumerate(parents):
        direct[i, ps] = True
    rel = np.full((n, n), REL_UNRELATED, dtype=np.int64)
    rel[ancestors] = REL_ANCESTOR
    rel[ancestors.T] = REL_DESCENDANT
    rel[direct] = REL_INPUT
    rel[direct.T] = REL_CONSUMER
    rel[np.arange(n), np.arange(n)] = REL_SELF
    return torch.from_numpy(rel)
