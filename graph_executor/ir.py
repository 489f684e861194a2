"""Material graph IR: versioned JSON, parsed into plain dataclasses and validated against schemas.

Nothing in a graph file is executed as code: node types are looked up in the registry by name,
and parameter values are checked against their declared kinds and ranges.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from graph_executor.errors import GraphError
from graph_executor.safe_json import JSONInputError, loads_json
from graph_executor.schema import NodeSpec
from graph_executor.registry import node_type

FORMAT = "matrl.graph/1"
MAX_NODES = 256
MAX_JSON_BYTES = 1 << 20
OUTPUT_PORTS = ("basecolor", "normal", "roughness", "metallic", "height")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class PortRef:
    node: str
    port: str

    def __str__(self) -> str:
        return f"{self.node}.{self.port}"


@dataclass
class Node:
    name: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, PortRef] = field(default_factory=dict)

    @property
    def spec(self) -> NodeSpec:
        return node_type(self.type, self.name)


@dataclass
class Graph:
    """A validated material graph: nodes in topological order, one `output` node."""

    name: str
    nodes: dict[str, Node]
    category: str = "misc"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        return list(self.nodes)

    @property
    def output_node(self) -> Node:
        return next(n for n in self.nodes.values() if n.type == "output")

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "category": self.category,
            "meta": copy.deepcopy(self.meta),
            "nodes": {
                n.name: {
                    "type": n.type,
                    "params": copy.deepcopy(n.params),
                    "inputs": {port: str(ref) for port, ref in n.inputs.items()},
                }
                for n in self.nodes.values()
            },
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def structure_hash(self) -> str:
        """Hash of node types and wiring only: parameter values do not change it."""
        skeleton = [(n.name, n.type, sorted((p, str(r)) for p, r in n.inputs.items()))
                    for n in self.nodes.values()]
        return hashlib.sha1(json.dumps(skeleton).encode()).hexdigest()[:16]

    def check_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> None:
        """Raise GraphError for a parameter override naming a missing node or an unknown parameter."""
        for node_name, params in overrides.items():
            if node_name not in self.nodes:
                raise GraphError("no such node in the graph", node_name)
            spec = self.nodes[node_name].spec
            known = {p.name for p in spec.params}
            for pname in params:
                if pname not in known:
                    raise GraphError(f"unknown parameter for node type '{spec.type}'", node_name, pname)

    def with_params(self, values: dict[str, dict[str, Any]]) -> "Graph":
        """A copy with some parameters replaced, validated like a parsed graph."""
        data = self.to_dict()
        for node_name, params in values.items():
            if node_name not in data["nodes"]:
                raise GraphError("no such node in the graph", node_name)
            data["nodes"][node_name]["params"].update(params)
        return parse_graph(data)


def _parse_ref(text: Any, node: str, port: str, nodes: dict) -> PortRef:
    if not isinstance(text, str):
        raise GraphError(f"input '{port}' must be a string 'node' or 'node.port', got {text!r}", node)
    src, _, src_port = text.partition(".")
    if src not in nodes:
        raise GraphError(f"input '{port}' references missing node '{src}' (dangling input)", node)
    spec = node_type(nodes[src]["type"], src)
    if not src_port:
        if len(spec.outputs) != 1:
            raise GraphError(f"input '{port}' must name a port of '{src}': one of {list(spec.outputs)}", node)
        src_port = next(iter(spec.outputs))
    if src_port not in spec.outputs:
        raise GraphError(f"input '{port}' references unknown output '{src}.{src_port}' "
                         f"(dangling input); outputs are {list(spec.outputs)}", node)
    return PortRef(src, src_port)


def _topological(nodes: dict[str, Node]) -> list[str]:
    state: dict[str, int] = {}
    order: list[str] = []
    for root in nodes:
        if root in state:
            continue
        stack = [(root, iter(sorted({r.node for r in nodes[root].inputs.values()})))]
        state[root] = 1
        while stack:
            name, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                state[name] = 2
                order.append(name)
            elif state.get(dep) == 1:
                raise GraphError(f"cycle through '{dep}'", name)
            elif dep not in state:
                state[dep] = 1
                stack.append((dep, iter(sorted({r.node for r in nodes[dep].inputs.values()}))))
    return order


def parse_graph(data: Any) -> Graph:
    """Validate a graph given as a dict (parsed JSON); raise GraphError naming the culprit."""
    if not isinstance(data, dict):
        raise GraphError(f"a graph must be a JSON object, got {type(data).__name__}")
    if data.get("format", FORMAT) != FORMAT:
        raise GraphError(f"unsupported format {data.get('format')!r}; expected {FORMAT!r}")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise GraphError("'nodes' must be a non-empty object")
    if len(raw_nodes) > MAX_NODES:
        raise GraphError(f"oversized graph: {len(raw_nodes)} nodes, at most {MAX_NODES}")
    for name, raw in raw_nodes.items():
        if not _NAME.match(name):
            raise GraphError("node names must be identifiers of at most 64 characters", name)
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise GraphError("each node needs a string 'type'", name)
        node_type(raw["type"], name)
    nodes: dict[str, Node] = {}
    for name, raw in raw_nodes.items():
        spec = node_type(raw["type"], name)
        unknown_keys = set(raw) - {"type", "params", "inputs"}
        if unknown_keys:
            raise GraphError(f"unknown keys {sorted(unknown_keys)}", name)
        params_in = raw.get("params", {})
        if not isinstance(params_in, dict):
            raise GraphError("'params' must be an object", name)
        known = {p.name for p in spec.params}
        for pname in params_in:
            if pname not in known:
                raise GraphError(f"unknown parameter for node type '{spec.type}'", name, pname)
        params = {p.name: p.check(params_in.get(p.name, p.default), name) for p in spec.params}
        inputs_in = raw.get("inputs", {})
        if not isinstance(inputs_in, dict):
            raise GraphError("'inputs' must be an object", name)
        inputs = {}
        for port, ref in inputs_in.items():
            if port not in spec.inputs:
                raise GraphError(f"unknown input port '{port}'; ports are {list(spec.inputs)}", name)
            inputs[port] = _parse_ref(ref, name, port, raw_nodes)
        for port in spec.inputs:
            if port not in inputs and port not in spec.optional_inputs:
                raise GraphError(f"required input '{port}' is not connected (missing input)", name)
        nodes[name] = Node(name, spec.type, params, inputs)
    outputs = [n for n in nodes.values() if n.type == "output"]
    if len(outputs) != 1:
        raise GraphError(f"a graph needs exactly one 'output' node, found {len(outputs)}")
    order = _topological(nodes)
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise GraphError("'meta' must be an object")
    return Graph(name=str(data.get("name", "graph")), nodes={n: nodes[n] for n in order},
                 category=str(data.get("category", "misc")), meta=meta)


def loads_graph(text: str | bytes) -> Graph:
    """Parse and validate graph JSON (at most MAX_JSON_BYTES of UTF-8, nested at most
    `safe_json.MAX_DEPTH` levels); every problem is a GraphError."""
    try:
        data = loads_json(text, max_bytes=MAX_JSON_BYTES)
    except JSONInputError as err:
        raise GraphError(str(err)) from None
    return parse_graph(data)


def load_graph(path: str | Path) -> Graph:
    """A graph file; reads at most one byte past the size cap, so a huge file is refused unread."""
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_JSON_BYTES + 1)
    except OSError as err:
        raise GraphError(f"cannot read graph file {str(path)!r}: {err.strerror or err}") from None
    if len(text) > MAX_JSON_BYTES:
        raise GraphError(f"graph file {str(path)!r} is oversized: more than {MAX_JSON_BYTES} bytes")
    return loads_graph(text)
