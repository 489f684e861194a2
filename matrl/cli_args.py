"""Checks of command arguments that argparse's `type=int` cannot make: seeds, torch devices, output paths.

Each check raises `UserError` naming the flag and the value; the `*_arg` variants are argparse
`type=` functions, so argparse reports them as `argument --seed: ...`. Output paths are checked
before any work, so a long render or dataset run never fails at its last step.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Iterable

from matrl.errors import UserError

SEED_MAX = (1 << 32) - 1  # numpy's legacy seeding and most tools take 32-bit seeds; torch and Arrow take int64


def _culprit(flag: str, value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    text = text if len(text) <= 60 else text[:60] + "..."
    return f"{flag} {text}" if flag else text


def check_seed(value: int, flag: str = "--seed") -> int:
    if not 0 <= value <= SEED_MAX:
        raise UserError(f"{_culprit(flag, value)}: a seed is in 0..{SEED_MAX}")
    return value


def check_positive(value: int, flag: str) -> int:
    if value < 1:
        raise UserError(f"{_culprit(flag, value)}: must be at least 1")
    return value


def check_device(name: str, flag: str = "--device", allow_auto: bool = False) -> str:
    """`name` as a device this machine has: 'cpu', 'cuda', 'cuda:N' (and 'auto' where allowed)."""
    if allow_auto and name == "auto":
        return name
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"{_culprit(flag, name)}: not a torch device (cpu, cuda, cuda:N"
                        f"{', auto' if allow_auto else ''})") from None
    if device.type == "cpu":
        return str(device)
    if device.type != "cuda":
        raise UserError(f"{_culprit(flag, name)}: this command runs on cpu or cuda, not {device.type}")
    if not torch.cuda.is_available():
        raise UserError(f"{_culprit(flag, name)}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"{_culprit(flag, name)}: this machine has {count} CUDA device(s)")
    return str(device)


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path, flag: str) -> Path:
    """A directory that exists or can be created, and can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {str(path)!r}: exists and is not a directory")
    base = _first_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag} {str(path)!r}: {str(base)!r} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(path)!r}: {str(base)!r} is not writable")
    return path


def check_output_file(path: str | Path, flag: str, suffixes: Iterable[str] | None = None) -> Path:
    """A file that can be (over)written in a directory that exists or can be created."""
    path = Path(path)
    if suffixes is not None:
        suffixes = sorted(suffixes)
        if path.suffix.lower() not in suffixes:
            raise UserError(f"{flag} {str(path)!r}: unknown file type {path.suffix or '(none)'!r}; "
                            f"use one of {', '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r}: is a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {str(path)!r}: is not writable")
    check_output_dir(path.parent, flag)
    return path


def as_arg_type(check: Callable, convert: Callable = str) -> Callable[[str], object]:
    """An argparse `type=` function: convert, then check; a UserError becomes argparse's error."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {convert.__name__} value: {text[:40]!r}") from None
        try:
            return check(value, flag="")  # argparse puts "argument --flag: " in front
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


seed_arg = as_arg_type(check_seed, int)
device_arg = as_arg_type(check_device)
positive_int = as_arg_type(check_positive, int)
