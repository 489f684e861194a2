"""Write graph_executor/library/*.json from the material recipes in tools/library_recipes.py.

    python tools/build_library.py                 # rewrite the JSON files (stale ones are removed)
    python tools/build_library.py --check         # also: defaults non-degenerate, random-draw validity
    python tools/build_library.py --preview DIR   # also: renders at 256² (one sheet per category)
    python tools/build_library.py --only oak_planks --preview DIR

Recipes call GraphBuilder methods named after node types: `g.perlin_fbm(scale=4)` adds a node
and returns its reference; positional arguments connect the node type's input ports in order,
keyword arguments naming an input port connect it, all other keywords are parameters. Seeds
are offset by a hash of the graph name, so variants of one recipe differ in their randomness.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from graph_executor.errors import GraphError  # noqa: E402
from graph_executor.ir import FORMAT, Graph, parse_graph  # noqa: E402
from graph_executor.registry import load_node_library  # noqa: E402

LIBRARY_DIR = REPO / "graph_executor" / "library"


class Ref(str):
    """A node's default output; `ref.p("mask")` names another output port."""

    def p(self, port: str) -> "Ref":
        return Ref(f"{self.split('.')[0]}.{port}")


class GraphBuilder:
    """Accumulates one graph's nodes, checking names against the node schemas as it goes."""

    def __init__(self, name: str, category: str, description: str):
        self.name = name
        self.category = category
        self.description = description
        self.nodes: dict[str, dict] = {}
        self.ranges: dict[str, Any] = {}
        self.fixed: list[str] = []
        self.sampling: dict[str, float] = {}
        self.seed_offset = zlib.crc32(name.encode()) % 5000

    def add(self, type: str, *sources: str, name: str | None = None, **kwargs: Any) -> Ref:
        library = load_node_library()
        if type not in library:
            raise GraphError(f"recipe {self.name!r} uses unknown node type {type!r}")
        spec = library[type]
        name = name or f"{type}_{len(self.nodes)}"
        if name in self.nodes:
            raise GraphError(f"recipe {self.name!r} repeats the node name {name!r}")
        ports = list(spec.inputs)
        if len(sources) > len(ports):
            raise GraphError(f"recipe {self.name!r}: {type} takes at most {len(ports)} inputs")
        inputs = {port: str(src) for port, src in zip(ports, sources)}
        params = {}
        for key, value in kwargs.items():
            if key in spec.inputs:
                inputs[key] = str(value)
            else:
                params[key] = value
        if "seed" in params:
            params["seed"] += self.seed_offset
        self.nodes[name] = {"type": type, "params": params, "inputs": inputs}
        return Ref(name)

    def __getattr__(self, type: str):
        if type.startswith("_"):
            raise AttributeError(type)
        return lambda *sources, **kwargs: self.add(type, *sources, **kwargs)

    def vary(self, ref: str, param: str, low: Any, high: Any) -> None:
        """Random draws take `param` uniformly in [low, high]."""
        self.ranges[f"{ref.split('.')[0]}.{param}"] = [low, high]

    def choices(self, ref: str, param: str, options: list[str]) -> None:
        """Random draws pick the enum `param` among `options`."""
        self.ranges[f"{ref.split('.')[0]}.{param}"] = list(options)

    def keep(self, ref: str, param: str) -> None:
        """Random draws keep the authored value of `param`."""
        self.fixed.append(f"{ref.split('.')[0]}.{param}")

    def to_dict(self) -> dict:
        meta: dict[str, Any] = {"description": self.description}
        sampling: dict[str, Any] = dict(self.sampling)
        if self.ranges:
            sampling["ranges"] = self.ranges
        if self.fixed:
            sampling["fixed"] = self.fixed
        if sampling:
            meta["sampling"] = sampling
        return {"format": FORMAT, "name": self.name, "category": self.category, "meta": meta, "nodes": self.nodes}

    def build(self) -> Graph:
        return parse_graph(self.to_dict())


def write_library(builders: list[GraphBuilder], only: set[str] | None) -> list[Graph]:
    graphs = []
    names = [b.name for b in builders]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise GraphError(f"recipes repeat graph names {sorted(duplicates)}")
    LIBRARY_DIR.mkdir(parents=True, exist_ok=True)
    if only is None:
        for stale in LIBRARY_DIR.glob("*.json"):
            if stale.stem not in names:
                stale.unlink()
    for builder in builders:
        if only is not None and builder.name not in only:
            continue
        try:
            graph = builder.build()
        except GraphError as err:
            raise GraphError(f"recipe {builder.name!r}: {err}") from None
        (LIBRARY_DIR / f"{graph.name}.json").write_text(json.dumps(builder.to_dict(), indent=1) + "\n")
        graphs.append(graph)
    return graphs


def check(graphs: list[Graph], draws: int) -> bool:
    from graph_executor.degeneracy import graph_degeneracy
    from graph_executor.sampling import predicted_parameters, sample_parameters

    ok = True
    for graph in graphs:
        default = graph_degeneracy(graph, res=64)[0]
        reasons = graph_degeneracy(graph, sample_parameters(graph, draws, 0), res=64, seed=list(range(draws)))
        valid = sum(r is None for r in reasons) / draws
        bad = default is not None or valid < 0.9
        ok &= not bad
        print(f"{'BAD ' if bad else 'ok  '}{graph.name:<26} {graph.category:<12} {len(graph.nodes):>3} nodes "
              f"{len(predicted_parameters(graph)):>3} params  default={default}  valid={valid:.2f}")
    return ok


def preview(graphs: list[Graph], out_dir: Path, res: int) -> None:
    from matrl.commands.graphs import contact_sheet

    out_dir.mkdir(parents=True, exist_ok=True)
    by_category: dict[str, dict[str, Graph]] = {}
    for graph in graphs:
        by_category.setdefault(graph.category, {})[graph.name] = graph
    for category, group in by_category.items():
        contact_sheet(group, res=res, columns=4).save(out_dir / f"{category}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--preview", type=Path)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from library_recipes import RECIPES

    graphs = write_library([recipe() for recipe in RECIPES], set(args.only) if args.only else None)
    print(f"wrote {len(graphs)} graphs to {LIBRARY_DIR.relative_to(REPO)}")
    ok = check(graphs, args.draws) if args.check else True
    if args.preview:
        preview(graphs, args.preview, args.res)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
