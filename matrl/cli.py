"""The `matrl` command line. Each subcommand lives in its own module under `matrl.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import matrl.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(matrl.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"matrl.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
