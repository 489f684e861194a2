"""The node registry, loaded: every node module imported (they register themselves with
`schema.node`), and lookups by type name.

Kept apart from `schema` so that imports point one way: node modules import `schema` (specs and
the `@node` decorator); the IR, executor, tokenizer and docs import `registry`, which imports the
node modules. Nothing imports back up, so there is no cycle, lazy or not.
"""

from __future__ import annotations

import graph_executor.nodes  # noqa: F401  (registration side effect)
from graph_executor.errors import GraphError
from graph_executor.schema import NODE_TYPES, NodeSpec


def load_node_library() -> dict[str, NodeSpec]:
    """The registry of every node type (all node modules are imported with this module)."""
    return NODE_TYPES


def node_type(type: str, node_name: str | None = None) -> NodeSpec:
    try:
        return NODE_TYPES[type]
    except KeyError:
        raise GraphError(f"unknown node type {type!r}", node_name) from None
