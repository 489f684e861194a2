"""The one way JSON from a user is parsed: a byte-size cap, a nesting-depth limit, an integer-digit limit.

`json.loads` alone lets hostile or broken input escape as the wrong exception: nesting a few
thousand levels deep raises `RecursionError` (the C scanner recurses once per level), and an integer
of more than 4300 digits raises Python's `ValueError` from `int()`; even a 400-digit integer later
breaks `float()`/`math.isfinite` and torch. `loads_json` checks all three limits and raises
`JSONInputError` (a `ValueError`) for every problem, so each caller maps one type to its own error
(`GraphError`, `PayloadError`, ...). It lives in the lowest package because every layer above it
parses user JSON: graph files, the reward service's `params` and `graph_json` columns, `--set`.

The depth is checked on the text before parsing, with the strings blanked out, so a deep document
is refused in linear time without building it. Sizes count UTF-8 bytes, not characters.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_BYTES = 1 << 20      # 1 MiB: the largest graph or parameter document a user sends
MAX_DEPTH = 32           # a graph nests 5 levels (graph/nodes/node/params/value); 32 leaves room for meta
MAX_INT_DIGITS = 32      # int64 has 19 digits; 32 keeps every integer convertible to float and torch-checkable

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JSONInputError(ValueError):
    """JSON that cannot be used: malformed, not UTF-8, too large, too deep or with too long an integer."""


class JSONLimitError(JSONInputError):
    """The text is over a limit (size, depth, integer digits): it must not be read any other way either."""


def _utf8_size(text: str, limit: int) -> int:
    """Bytes of `text` in UTF-8, or `limit + 1` as soon as that is certain (no huge encode)."""
    if len(text) > limit:
        return limit + 1
    if 4 * len(text) <= limit:
        return len(text)  # a lower bound that is already under the limit: good enough
    return len(text.encode("utf-8", "surrogatepass"))


def max_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, ignoring brackets inside strings."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub('""', text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def loads_json(text: str | bytes, *, what: str = "", max_bytes: int = MAX_BYTES, depth: int = MAX_DEPTH,
               int_digits: int = MAX_INT_DIGITS) -> Any:
    """Parse `text` (str, or UTF-8 bytes) within the limits; every problem is a `JSONInputError` whose
    message starts with `what`, the culprit ("column 'params', row 3", "--set a.b"; "" for none)."""
    where = f"{what}: " if what else ""
    is_bytes = isinstance(text, (bytes, bytearray))
    if not is_bytes and not isinstance(text, str):
        raise JSONInputError(f"{where}expected JSON text, got {type(text).__name__}")
    size = len(text) if is_bytes else _utf8_size(text, max_bytes)
    if size > max_bytes:
        shown = f"{size} bytes" if is_bytes or len(text) <= max_bytes else f"more than {max_bytes} bytes"
        raise JSONLimitError(f"{where}oversized: {shown} of JSON, at most {max_bytes}")
    if is_bytes:
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise JSONInputError(f"{where}not UTF-8 text (byte {err.start})") from None
    if max_depth(text) > depth:
        raise JSONLimitError(f"{where}nested deeper than {depth} levels")

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > int_digits:
            raise JSONLimitError(f"{where}integer of {len(digits.lstrip('-'))} digits (at most {int_digits})")
        return int(digits)

    try:
        return json.loads(text, parse_int=parse_int)
    except json.JSONDecodeError as err:
        raise JSONInputError(f"{where}malformed JSON: {err}") from None
    except RecursionError:  # not reachable after the depth check; kept so no RecursionError ever escapes
        raise JSONLimitError(f"{where}nested deeper than {depth} levels") from None
