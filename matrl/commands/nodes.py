"""`matrl nodes list|doc`: the node library's types and their generated reference."""

from __future__ import annotations

import argparse
from pathlib import Path

from matrl.cli_args import check_output_file


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("nodes", help="list node types or write their reference (docs/nodes.md)")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="one line per node type").set_defaults(run=_list)
    doc = actions.add_parser("doc", help="write the Markdown reference generated from the schemas")
    doc.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    doc.set_defaults(run=_doc)


def _list(args) -> int:
    from graph_executor.registry import load_node_library

    for name, spec in sorted(load_node_library().items()):
        print(f"{name:24s} {spec.category:8s} {len(spec.params):2d} params  {spec.doc}")
    return 0


def _doc(args) -> int:
    from graph_executor.node_docs import nodes_markdown

    if args.output:
        check_output_file(args.output, "-o")
    text = nodes_markdown()
    if args.output:
        args.output.write_text(text)
    else:
        print(text, end="")
    return 0
