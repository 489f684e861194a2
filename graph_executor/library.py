"""The bundled library of hand-written material graphs, shipped as package data JSON.

Graphs are looked up by name (the JSON file stem); `resolve_graph` also accepts a path, so
commands can take either a library name or a graph file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from graph_executor.errors import GraphError
from graph_executor.ir import Graph, load_graph, loads_graph


def _library_dir() -> Path:
    return Path(__file__).resolve().parent / "library"


@lru_cache(maxsize=None)
def _graph_text(name: str) -> str:
    return (_library_dir() / f"{name}.json").read_text(encoding="utf-8")


def library_names() -> list[str]:
    """Names of the bundled graphs, sorted."""
    return sorted(entry.name[:-5] for entry in _library_dir().iterdir() if entry.name.endswith(".json"))


def load_library_graph(name: str) -> Graph:
    """Parse one bundled graph (a fresh Graph each call, so callers may modify it)."""
    if name not in library_names():
        raise GraphError(f"unknown library graph {name!r}; `matrl graphs list` shows the library")
    graph = loads_graph(_graph_text(name))
    if graph.name != name:
        raise GraphError(f"library file {name}.json declares the name {graph.name!r}")
    return graph


def library_graphs() -> dict[str, Graph]:
    """Every bundled graph by name."""
    return {name: load_library_graph(name) for name in library_names()}


def resolve_graph(ref: str | Path) -> Graph:
    """A graph from a JSON file path or, when no such file exists, a library name."""
    path = Path(ref)
    if path.is_file():
        return load_graph(path)
    if str(ref).endswith(".json"):
        raise GraphError(f"graph file {str(ref)!r} does not exist")
    return load_library_graph(str(ref))
