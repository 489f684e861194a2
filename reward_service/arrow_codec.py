"""Arrow IPC payloads of the reward service: request and response schemas, encode, decode, validate.

A request batch has one row per sample; graph and target columns may be dictionary-encoded so that
a value shared by many rows is sent once. Decoding groups the rows by (graph, target, params or
tokens) into worker `ScoreRequest`s; every malformed input raises `PayloadError` naming the column
and row. The schemas are summarised in proto/reward.proto.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from graph_executor.safe_json import JSONInputError, loads_json
from reward_service.api import LIBRARY_PREFIX, ScoreRequest, ScoreResult

_GRAPH = pa.dictionary(pa.int32(), pa.string())
_TARGET_IMAGE = pa.dictionary(pa.int32(), pa.binary())

REQUEST_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("graph_json", _GRAPH),
    pa.field("graph_id", _GRAPH),
    pa.field("params", pa.string()),
    pa.field("tokens", pa.list_(pa.int32())),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("target_image", _TARGET_IMAGE),
    pa.field("target_key", _GRAPH),
])

RESPONSE_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("reward", pa.float64(), nullable=False),
    pa.field("ok", pa.bool_(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("terms", pa.map_(pa.string(), pa.float64())),
    pa.field("timings_s", pa.map_(pa.string(), pa.float64())),
])

_REQUIRED = ("sample_id", "seed")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class PayloadError(ValueError):
    """An Arrow payload that cannot be used as a whole; the message names the column and row."""


# ---- shared helpers ------------------------------------------------------------------------------

def _write(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _read(payload: bytes, what: str) -> pa.Table:
    if not payload:
        raise PayloadError(f"{what}: empty Arrow payload")
    try:
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise PayloadError(f"{what}: malformed Arrow IPC stream ({type(err).__name__}: {err})") from None
    return table


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or _is_text(t)


def _values(column: pa.ChunkedArray, name: str, accepts, expected: str) -> list:
    """Python values of a (possibly dictionary-encoded) column, after a type check. Rows that
    share a dictionary entry share one Python object (a target image is not copied per row)."""
    t = column.type
    value_type = t.value_type if pa.types.is_dictionary(t) else t
    if not accepts(value_type):
        raise PayloadError(f"column '{name}' has type {t}, expected {expected}")
    if not pa.types.is_dictionary(t):
        return column.to_pylist()
    out: list = []
    for chunk in column.chunks:
        entries = chunk.dictionary.to_pylist()
        out.extend(None if i is None else entries[i] for i in chunk.indices.to_pylist())
    return out


# ---- requests ------------------------------------------------------------------------------------

@dataclass
class SampleGroup:
    """Rows of a request that share graph, target and sample kind: one worker request (or a few)."""

    structure: str
    target: bytes | str
    rows: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    param_sets: list[dict] | None = None
    tokens: list[list[int]] | None = None

    @property
    def graph_id(self) -> str | None:
        return self.structure[len(LIBRARY_PREFIX):] if self.structure.startswith(LIBRARY_PREFIX) else None

    @property
    def target_key(self) -> str | None:
        return self.target if isinstance(self.target, str) else None

    def chunks(self, size: int) -> list["SampleGroup"]:
        """Split into groups of at most `size` rows, so one large group can use several workers."""
        if len(self.rows) <= size:
            return [self]
        out = []
        for lo in range(0, len(self.rows), size):
            sl = slice(lo, lo + size)
            out.append(SampleGroup(self.structure, self.target, self.rows[sl], self.seeds[sl],
                                   None if self.param_sets is None else self.param_sets[sl],
                                   None if self.tokens is None else self.tokens[sl]))
        return out

    def to_request(self, request_id: str = "", timeout_s: float | None = None) -> ScoreRequest:
        return ScoreRequest(structure=self.structure, seeds=self.seeds, target=self.target,
                            param_sets=self.param_sets, tokens=self.tokens, request_id=request_id,
                            timeout_s=timeout_s)


@dataclass
class DecodedRequest:
    sample_ids: list[int]
    groups: list[SampleGroup]

    def __len__(self) -> int:
        return len(self.sample_ids)


def _one_of(a: list, b: list, names: tuple[str, str], row: int, required: bool) -> int | None:
    """Which of two alternative columns is set in `row` (0 or 1); None when neither and optional."""
    has_a, has_b = a[row] is not None, b[row] is not None
    if has_a and has_b:
        raise PayloadError(f"row {row}: both '{names[0]}' and '{names[1]}' are set; give one")
    if not has_a and not has_b:
        if required:
            raise PayloadError(f"row {row}: neither '{names[0]}' nor '{names[1]}' is set; give one")
        return None
    return 0 if has_a else 1


def _parse_params(text: str, row: int) -> dict:
    """One row's parameter JSON, within graph_executor.safe_json's size, depth and integer-digit limits."""
    try:
        value = loads_json(text, what=f"column 'params', row {row}")
    except JSONInputError as err:
        raise PayloadError(str(err)) from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise PayloadError(f"column 'params', row {row}: expected a JSON object {{node: {{param: value}}}}")
    return value


def decode_request(payload: bytes) -> DecodedRequest:
    """Validate a request payload and group its rows; raise PayloadError naming the culprit."""
    table = _read(payload, "request")
    names = table.column_names
    unknown = [n for n in names if n not in REQUEST_SCHEMA.names]
    if unknown:
        raise PayloadError(f"unknown column(s) {unknown}; the request schema has {REQUEST_SCHEMA.names}")
    if len(set(names)) != len(names):
        raise PayloadError(f"duplicate column names in {names}")
    for name in _REQUIRED:
        if name not in names:
            raise PayloadError(f"missing column '{name}'")
    n = table.num_rows
    if n == 0:
        raise PayloadError("the request has no rows (samples)")

    def column(name: str, accepts, expected: str) -> list:
        if name not in names:
            return [None] * n
        return _values(table.column(name), name, accepts, expected)

    ids = column("sample_id", pa.types.is_integer, "an integer type")
    seeds = column("seed", pa.types.is_integer, "an integer type")
    graph_json = column("graph_json", _is_text, "string (or dictionary of string)")
    graph_id = column("graph_id", _is_text, "string (or dictionary of string)")
    params = column("params", _is_text, "string (JSON)")
    tokens = column("tokens", lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t))
                    and pa.types.is_integer(t.value_type), "list of integers")
    target_image = column("target_image", _is_bytes, "binary (or dictionary of binary)")
    target_key = column("target_key", _is_text, "string (or dictionary of string)")
    for name, values in (("sample_id", ids), ("seed", seeds)):
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise PayloadError(f"column '{name}', row {missing[0]}: null (the column may not have nulls)")
        outside = [i for i, v in enumerate(values) if not _INT64_MIN <= v <= _INT64_MAX]
        if outside:
            raise PayloadError(f"column '{name}', row {outside[0]}: {values[outside[0]]} does not fit in int64")

    groups: dict[tuple, SampleGroup] = {}
    for row in range(n):
        which_graph = _one_of(graph_json, graph_id, ("graph_json", "graph_id"), row, True)
        structure = graph_json[row] if which_graph == 0 else LIBRARY_PREFIX + graph_id[row]
        if which_graph == 1 and not graph_id[row]:
            raise PayloadError(f"column 'graph_id', row {row}: empty graph id")
        which_target = _one_of(target_image, target_key, ("target_image", "target_key"), row, True)
        target = target_image[row] if which_target == 0 else target_key[row]
        if which_target == 0 and not isinstance(target, bytes):
            target = target.encode()
        if which_target == 0 and not target:
            raise PayloadError(f"column 'target_image', row {row}: empty image bytes")
        kind = _one_of(params, tokens, ("params", "tokens"), row, False)
        if kind == 1 and any(t is None for t in tokens[row]):
            raise PayloadError(f"column 'tokens', row {row}: null token")
        key = (which_graph, structure, which_target, target, kind == 1)
        group = groups.get(key)
        if group is None:
            group = groups[key] = SampleGroup(structure, target, param_sets=None if kind == 1 else [],
                                              tokens=[] if kind == 1 else None)
        group.rows.append(row)
        group.seeds.append(int(seeds[row]))
        if kind == 1:
            group.tokens.append([int(t) for t in tokens[row]])
        else:
            group.param_sets.append({} if kind is None else _parse_params(params[row], row))
    return DecodedRequest([int(i) for i in ids], list(groups.values()))


def _encode_target(target: Any) -> bytes:
    """Targets travel as encoded images; arrays are PNG-encoded (floats in [0,1] quantised to 8 bits)."""
    if isinstance(target, (bytes, bytearray, memoryview)):
        return bytes(target)
    from PIL import Image

    array = target.detach().cpu().numpy() if hasattr(target, "detach") else np.asarray(target)
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _dictionary(values: list, value_type: pa.DataType) -> pa.Array:
    """A dictionary-encoded column in which each distinct value (or null) is stored once."""
    index: dict = {}
    indices = []
    for v in values:
        if v is None:
            indices.append(None)
        else:
            indices.append(index.setdefault(v, len(index)))
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(index), value_type))


def encode_request(requests: Sequence[ScoreRequest], first_sample_id: int = 0) -> bytes:
    """One Arrow payload for several worker-style requests; sample ids count up from `first_sample_id`.

    `structure` is graph JSON or "lib:<name>"; `target` encoded image bytes, an image array, or a
    target key (str) registered with PutTarget.
    """
    ids, graph_json, graph_id, params, tokens, seeds, target_image, target_key = ([] for _ in range(8))
    encoded_targets: dict[int, bytes] = {}
    for request in requests:
        n = len(request.seeds)
        samples = request.tokens if request.tokens is not None else request.param_sets
        if samples is not None and len(samples) != n:
            raise PayloadError(f"request {request.request_id!r}: {len(samples)} samples but {n} seeds")
        is_lib = request.structure.startswith(LIBRARY_PREFIX)
        key = request.target if isinstance(request.target, str) else None
        image = None
        if key is None:
            image = encoded_targets.get(id(request.target))
            if image is None:
                image = encoded_targets[id(request.target)] = _encode_target(request.target)
        for i in range(n):
            ids.append(first_sample_id + len(ids))
            graph_json.append(None if is_lib else request.structure)
            graph_id.append(request.structure[len(LIBRARY_PREFIX):] if is_lib else None)
            params.append(None if request.param_sets is None else json.dumps(request.param_sets[i]))
            tokens.append(None if request.tokens is None else list(request.tokens[i]))
            seeds.append(int(request.seeds[i]))
            target_image.append(image)
            target_key.append(key)
    batch = pa.RecordBatch.from_arrays([
        pa.array(ids, pa.int64()), _dictionary(graph_json, pa.string()), _dictionary(graph_id, pa.string()),
        pa.array(params, pa.string()), pa.array(tokens, pa.list_(pa.int32())), pa.array(seeds, pa.int64()),
        _dictionary(target_image, pa.binary()), _dictionary(target_key, pa.string()),
    ], schema=REQUEST_SCHEMA)
    return _write(batch)


# ---- responses -----------------------------------------------------------------------------------

def encode_response(sample_ids: Sequence[int], results: Sequence[ScoreResult]) -> bytes:
    if len(sample_ids) != len(results):
        raise ValueError(f"{len(results)} results for {len(sample_ids)} samples")
    batch = pa.RecordBatch.from_arrays([
        pa.array(sample_ids, pa.int64()),
        pa.array([r.reward for r in results], pa.float64()),
        pa.array([r.ok for r in results], pa.bool_()),
        pa.array([None if r.ok else r.error for r in results], pa.string()),
        pa.array([list(r.terms.items()) for r in results], RESPONSE_SCHEMA.field("terms").type),
        pa.array([list(r.timings.items()) for r in results], RESPONSE_SCHEMA.field("timings_s").type),
    ], schema=RESPONSE_SCHEMA)
    return _write(batch)


def decode_response(payload: bytes) -> tuple[list[int], list[ScoreResult]]:
    table = _read(payload, "response")
    if table.schema.remove_metadata() != RESPONSE_SCHEMA:
        raise PayloadError(f"response schema {table.schema} differs from {RESPONSE_SCHEMA}")
    cols = {name: table.column(name).to_pylist() for name in RESPONSE_SCHEMA.names}
    results = [ScoreResult(reward=reward if reward is not None else math.nan, terms=dict(terms or []),
                           ok=ok, error=error or "", timings=dict(timings or []))
               for reward, ok, error, terms, timings
               in zip(cols["reward"], cols["ok"], cols["error"], cols["terms"], cols["timings_s"])]
    return cols["sample_id"], results
