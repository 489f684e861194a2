"""The `matrl` command line. Each subcommand lives in its own module under `matrl.commands`.

User errors (see `matrl.errors`) print one line, `matrl <command>: error: <message naming the
culprit>`, and exit 2; argparse's own errors are one line too. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import matrl.commands
from matrl.errors import user_error_message


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block); subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (--help shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="matrl", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(matrl.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"matrl.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        print(f"matrl {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
