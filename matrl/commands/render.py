"""`matrl render GRAPH --res 512 --seed 0 [--set node.param=value ...] -o DIR`: maps and flash render as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from graph_executor.errors import GraphError
from graph_executor.executor import Plan
from graph_executor.ir import Graph
from graph_executor.library import resolve_graph
from graph_executor.render import render_flash
from graph_executor.safe_json import JSONInputError, JSONLimitError, loads_json
from matrl.cli_args import SEED_MAX, check_output_dir, device_arg, seed_arg

MAP_NAMES = ("basecolor", "normal", "roughness", "metallic", "height")


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (C,H,W) tensor in [0,1] (C = 1 or 3) as an 8-bit PIL image."""
    array = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    if array.shape[0] == 1:
        return Image.fromarray(array[0], mode="L")
    return Image.fromarray(array.transpose(1, 2, 0), mode="RGB")


def parse_assignment(text: str) -> tuple[str, str, Any]:
    """`node.param=value` -> (node, param, value); the value is JSON, a comma list of numbers, or a bare word.

    JSON values go through `graph_executor.safe_json` (size, depth and integer-digit limits); a value
    over a limit is an error, not a bare word.
    """
    target, sep, raw = text.partition("=")
    node, dot, param = target.partition(".")
    if not sep or not dot or not node or not param or not raw:
        raise GraphError(f"--set {_short(text)} must read node.param=value")
    try:
        return node, param, loads_json(raw, what=f"--set {_short(target)}")
    except JSONLimitError as err:
        raise GraphError(str(err), node, param) from None
    except JSONInputError:
        pass
    if "," in raw:
        try:
            return node, param, [float(v) for v in raw.split(",")]
        except ValueError:
            raise GraphError(f"--set {_short(target)}: cannot read {_short(raw)} as a list of numbers") from None
    return node, param, raw


def _short(text: str, limit: int = 60) -> str:
    """`text` quoted for an error message, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def apply_assignments(graph: Graph, assignments: list[str]) -> Graph:
    """The graph with every `node.param=value` applied and validated."""
    values: dict[str, dict[str, Any]] = {}
    for text in assignments:
        node, param, value = parse_assignment(text)
        if node not in graph.nodes:
            raise GraphError(f"--set {_short(text)}: no such node in graph '{graph.name}'", node)
        values.setdefault(node, {})[param] = value
    for node, params in values.items():
        known = {spec.name for spec in graph.nodes[node].spec.params}
        for param in params:
            if param not in known:
                raise GraphError(f"unknown parameter for node type '{graph.nodes[node].type}'; "
                                 f"parameters are {sorted(known)}", node, param)
    return graph.with_params(values)


def render_to_dir(graph: Graph, out_dir: Path, res: int, seed: int, device: str) -> list[Path]:
    """Execute, render and write basecolor/normal/roughness/metallic/height/render PNGs."""
    plan = Plan(graph)
    maps = plan.run(plan.stack(device=device), res=res, seed=seed, device=device)
    images = dict(maps.items())
    images["render"] = render_flash(maps)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (*MAP_NAMES, "render"):
        path = out_dir / f"{name}.png"
        to_pil(images[name][0]).save(path)
        written.append(path)
    return written


def run(args) -> int:
    out = check_output_dir(args.output, "-o")
    graph = apply_assignments(resolve_graph(args.graph), args.set)
    for path in render_to_dir(graph, out, args.res, args.seed, args.device):
        print(path)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("render", help="render a graph's maps and flash image to PNG",
                                   description=__doc__)
    parser.add_argument("graph", help="graph JSON file, or the name of a library graph")
    parser.add_argument("--res", type=int, default=512, help="resolution, a power of two in 64..2048")
    parser.add_argument("--seed", type=seed_arg, default=0, help=f"noise seed, 0..{SEED_MAX}")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                        help="override a parameter (repeatable); values are JSON, e.g. 0.3, true, "
                             "overlay, [0.2,0.1,0.05]")
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.set_defaults(run=run)
