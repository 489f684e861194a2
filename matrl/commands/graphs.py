"""`matrl graphs list|show|validate|stats|sheet`: inspect and check the bundled graph library."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

from graph_executor.degeneracy import graph_degeneracy
from graph_executor.errors import GraphError
from graph_executor.executor import Plan
from graph_executor.ir import Graph
from graph_executor.library import library_graphs, library_names, resolve_graph
from graph_executor.render import render_flash
from graph_executor.sampling import predicted_parameters, sample_parameters
from matrl.cli_args import SEED_MAX, check_output_file, positive_int, seed_arg
from matrl.commands.render import to_pil
from matrl.errors import UserError, user_error_message


@dataclass
class LibraryStats:
    """Size and health of a set of graphs; `node_types` counts distinct types the graphs use."""

    graphs: int
    categories: int
    node_types: int
    median_nodes: float
    median_predicted_params: float
    valid_random_fraction: float


def valid_fraction(graph: Graph, draws: int, res: int = 64, seed: int = 0) -> float:
    """Fraction of `draws` random parameter sets of `graph` that give a non-degenerate material."""
    param_sets = sample_parameters(graph, draws, seed)
    reasons = graph_degeneracy(graph, param_sets, res=res, seed=list(range(seed, seed + draws)))
    return sum(r is None for r in reasons) / draws


def compute_stats(graphs: dict[str, Graph], draws: int = 8, res: int = 64, seed: int = 0) -> LibraryStats:
    if not graphs:
        raise GraphError("no graphs to summarise")
    valid = [valid_fraction(g, draws, res, seed) for g in graphs.values()] if draws > 0 else [float("nan")]
    return LibraryStats(
        graphs=len(graphs),
        categories=len({g.category for g in graphs.values()}),
        node_types=len({n.type for g in graphs.values() for n in g.nodes.values()}),
        median_nodes=float(statistics.median(len(g.nodes) for g in graphs.values())),
        median_predicted_params=float(statistics.median(len(predicted_parameters(g)) for g in graphs.values())),
        valid_random_fraction=float(statistics.fmean(valid)),
    )


def _summary(graph: Graph) -> dict:
    return {"name": graph.name, "category": graph.category, "nodes": len(graph.nodes),
            "predicted_params": len(predicted_parameters(graph)),
            "description": graph.meta.get("description", "")}


def _list(args) -> int:
    rows = [_summary(g) for g in library_graphs().values()
            if args.category is None or g.category == args.category]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        print(f"{row['name']:<28} {row['category']:<14} {row['nodes']:>3} nodes "
              f"{row['predicted_params']:>3} params  {row['description']}")
    return 0


def _show(args) -> int:
    graph = resolve_graph(args.graph)
    if args.json:
        print(graph.to_json())
        return 0
    row = _summary(graph)
    print(f"{row['name']} ({row['category']}): {row['nodes']} nodes, {row['predicted_params']} predicted "
          f"parameters\n{row['description']}")
    for node in graph.nodes.values():
        wiring = ", ".join(f"{port}<-{ref}" for port, ref in node.inputs.items())
        params = ", ".join(f"{k}={v}" for k, v in node.params.items())
        print(f"  {node.name:<18} {node.type:<20} [{wiring}] {params}")
    return 0


def _validate(args) -> int:
    """Check every graph and report each failure (a user error of one graph does not stop the rest)."""
    refs = args.graphs or library_names()
    failures = 0
    for ref in refs:
        try:
            reason = graph_degeneracy(resolve_graph(ref), res=args.res)[0]
            if reason is not None:
                raise GraphError(f"degenerate at its default parameters ({reason})")
        except Exception as err:
            message = user_error_message(err)
            if message is None:
                raise
            failures += 1
            print(f"FAIL {ref}: {message}", file=sys.stderr)
            continue
        print(f"ok   {ref}")
    return 1 if failures else 0


def _stats(args) -> int:
    stats = compute_stats(library_graphs(), draws=args.draws, res=args.res, seed=args.seed)
    if args.json:
        print(json.dumps(asdict(stats)))
    else:
        for key, value in asdict(stats).items():
            print(f"{key:<24} {value}")
    return 0


def contact_sheet(graphs: dict[str, Graph], res: int = 128, columns: int = 8, seed: int = 0) -> Image.Image:
    """Flash renders of `graphs` in a labelled grid."""
    label_h = 14
    rows = (len(graphs) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * res, rows * (res + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, graph) in enumerate(graphs.items()):
        plan = Plan(graph)
        image = render_flash(plan.run(plan.stack(), res=res, seed=seed))[0]
        x, y = (i % columns) * res, (i // columns) * (res + label_h)
        sheet.paste(to_pil(image), (x, y))
        draw.text((x + 2, y + res + 1), name[: res // 6], fill="black")
    return sheet


def _sheet(args) -> int:
    out = check_output_file(args.output, "-o", Image.registered_extensions())
    graphs = dict(sorted(library_graphs().items(), key=lambda item: (item[1].category, item[0])))
    if args.category:
        graphs = {k: g for k, g in graphs.items() if g.category == args.category}
    if not graphs:
        raise UserError(f"--category {args.category!r}: no library graph has this category")
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(graphs, res=args.res, columns=args.columns, seed=args.seed).save(out)
    print(out)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("graphs", help="inspect and check the graph library", description=__doc__)
    sub = parser.add_subparsers(dest="graphs_command", required=True)

    p = sub.add_parser("list", help="one line per library graph")
    p.add_argument("--category", help="only graphs of this category")
    p.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    p.set_defaults(run=_list)

    p = sub.add_parser("show", help="nodes, wiring and parameters of a graph")
    p.add_argument("graph", help="library name or graph JSON file")
    p.add_argument("--json", action="store_true", help="print the graph JSON")
    p.set_defaults(run=_show)

    p = sub.add_parser("validate", help="parse, execute and check graphs (default: the whole library)")
    p.add_argument("graphs", nargs="*", help="library names or graph JSON files")
    p.add_argument("--res", type=int, default=64, help="resolution of the degeneracy check")
    p.set_defaults(run=_validate)

    p = sub.add_parser("stats", help="library size and the fraction of non-degenerate random draws")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--draws", type=int, default=8, help="random parameter draws per graph")
    p.add_argument("--res", type=int, default=64, help="render resolution of the draws")
    p.add_argument("--seed", type=seed_arg, default=0, help=f"seed of the draws, 0..{SEED_MAX}")
    p.set_defaults(run=_stats)

    p = sub.add_parser("sheet", help="contact sheet of library renders, grouped by category")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .jpg, ...)")
    p.add_argument("--res", type=int, default=128, help="side of one tile")
    p.add_argument("--columns", type=positive_int, default=8, help="tiles per row")
    p.add_argument("--seed", type=seed_arg, default=0, help=f"noise seed, 0..{SEED_MAX}")
    p.add_argument("--category", help="only graphs of this category")
    p.set_defaults(run=_sheet)
