"""The one error type that bad graphs, parameters and requests raise."""

from __future__ import annotations


class GraphError(ValueError):
    """A graph, or a parameter of it, is invalid. Names the culprit node and parameter."""

    def __init__(self, message: str, node: str | None = None, param: str | None = None):
        self.node = node
        self.param = param
        where = ""
        if node is not None:
            where = f"node '{node}'"
            if param is not None:
                where += f", parameter '{param}'"
            where += ": "
        super().__init__(where + message)
        self.reason = message
