"""Trajectories as Arrow record batches: the schema rollout workers write and the learner reads.

One row is one trajectory: the whole parameter-token sequence sampled for one (target, structure)
pair, with what PPO needs to replay it:

    target_id        string     which target image (dataset row, photo file) it was sampled for
    target_kind      string     "synthetic" or "real"
    structure_id     string     library name or generated-structure id
    graph_json       dict<str>  the structure as matrl.graph/1 JSON (sent once per batch)
    image_tokens     dict<bin>  the frozen encoder's tokens of the target, float16 bytes (T x C),
                                shared by every sample of a target (sent once per batch)
    tokens           list<u8>   one value token (0..127) per parameter slot
    behaviour_logp   list<f32>  log pi_behaviour(token) per slot, at temperature 1 (masks only)
    valid_tokens     list<u8>   slot masks: slot i admits tokens 0..valid_tokens[i]-1 (1..128)
    seed             int64      executor seed the reward was computed with
    reward           float64    appearance reward (the failure reward when not ok)
    reward_terms     map        gram, lab, ... as the reward service returned them
    ok               bool       false when the sample failed (reason in `failure`)
    failure          string     why (null when ok)
    policy_version   int64      version of the weights that sampled it
    worker_id        string     rollout worker that produced it
    sampled_at       float64    unix seconds when sampling finished
    scored_at        float64    unix seconds when its reward came back

Masks are prefix masks (the tokenizer admits tokens 0..n-1 of a slot), so one byte per slot
stores them exactly instead of 128 bits. `to_tensors` turns a table into padded torch tensors and a
collated `PolicyBatch` (structures are tokenised once per distinct graph and cached).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from graph_executor.ir import loads_graph
from policy.batching import PolicyBatch, collate
from policy.tokenizer import VALUE_BINS, GraphStructure, GraphTokenizer, Vocabulary

_DICT_STR = pa.dictionary(pa.int32(), pa.string())
_DICT_BIN = pa.dictionary(pa.int32(), pa.binary())

TRAJECTORY_SCHEMA = pa.schema([
    pa.field("target_id", pa.string(), nullable=False),
    pa.field("target_kind", pa.string(), nullable=False),
    pa.field("structure_id", pa.string(), nullable=False),
    pa.field("graph_json", _DICT_STR, nullable=False),
    pa.field("image_tokens", _DICT_BIN, nullable=False),
    pa.field("tokens", pa.list_(pa.uint8()), nullable=False),
    pa.field("behaviour_logp", pa.list_(pa.float32()), nullable=False),
    pa.field("valid_tokens", pa.list_(pa.uint8()), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("reward", pa.float64(), nullable=False),
    pa.field("reward_terms", pa.map_(pa.string(), pa.float64())),
    pa.field("ok", pa.bool_(), nullable=False),
    pa.field("failure", pa.string()),
    pa.field("policy_version", pa.int64(), nullable=False),
    pa.field("worker_id", pa.string(), nullable=False),
    pa.field("sampled_at", pa.float64(), nullable=False),
    pa.field("scored_at", pa.float64(), nullable=False),
])

# Failures that say nothing about the sampled parameters (the service ran out of time): such rows
# are kept in the buffer and counted, but not trained on.
INFRASTRUCTURE_FAILURES = ("timeout",)


class TrajectoryError(ValueError):
    """A record batch that is not a trajectory batch; names the column and row."""


@dataclass
class Trajectory:
    """One sampled sequence and its outcome, before it becomes an Arrow row."""

    target_id: str
    target_kind: str
    structure_id: str
    graph_json: str
    image_tokens: np.ndarray       # (T, C) float16
    tokens: np.ndarray             # (S,) uint8
    behaviour_logp: np.ndarray     # (S,) float32
    valid_tokens: np.ndarray       # (S,) valid-token count per slot, 1..128
    seed: int
    reward: float
    reward_terms: dict
    ok: bool
    failure: str | None
    policy_version: int
    worker_id: str
    sampled_at: float
    scored_at: float


def _dictionary(values: list, value_type: pa.DataType) -> pa.DictionaryArray:
    index: dict = {}
    indices = [index.setdefault(v, len(index)) for v in values]
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(index), value_type))


def encode_valid_tokens(counts: np.ndarray) -> np.ndarray:
    """Valid-token counts 1..128 as uint8 (128 fits)."""
    counts = np.asarray(counts)
    if counts.size and (counts.min() < 1 or counts.max() > VALUE_BINS):
        raise TrajectoryError(f"valid token counts must be in 1..{VALUE_BINS}")
    return counts.astype(np.uint8)


def to_record_batch(trajectories: Sequence[Trajectory]) -> pa.RecordBatch:
    """Arrow record batch in TRAJECTORY_SCHEMA; targets' image tokens and graphs are stored once."""
    if not trajectories:
        return pa.RecordBatch.from_pylist([], schema=TRAJECTORY_SCHEMA)
    t = trajectories
    encoded: dict[int, bytes] = {}  # image tokens are shared by the samples of a target: encode each once
    image_bytes = [encoded.get(id(x.image_tokens)) or encoded.setdefault(
        id(x.image_tokens), np.ascontiguousarray(x.image_tokens, dtype=np.float16).tobytes()) for x in t]
    shape = t[0].image_tokens.shape
    if any(x.image_tokens.shape != shape for x in t):
        raise TrajectoryError("image tokens of one batch must share a shape")
    columns = [
        pa.array([x.target_id for x in t], pa.string()),
        pa.array([x.target_kind for x in t], pa.string()),
        pa.array([x.structure_id for x in t], pa.string()),
        _dictionary([x.graph_json for x in t], pa.string()),
        _dictionary(image_bytes, pa.binary()),
        pa.array([np.asarray(x.tokens, dtype=np.uint8) for x in t], pa.list_(pa.uint8())),
        pa.array([np.asarray(x.behaviour_logp, dtype=np.float32) for x in t], pa.list_(pa.float32())),
        pa.array([encode_valid_tokens(x.valid_tokens) for x in t], pa.list_(pa.uint8())),
        pa.array([int(x.seed) for x in t], pa.int64()),
        pa.array([float(x.reward) for x in t], pa.float64()),
        pa.array([list(x.reward_terms.items()) for x in t], pa.map_(pa.string(), pa.float64())),
        pa.array([bool(x.ok) for x in t], pa.bool_()),
        pa.array([None if x.ok else (x.failure or "failed") for x in t], pa.string()),
        pa.array([int(x.policy_version) for x in t], pa.int64()),
        pa.array([x.worker_id for x in t], pa.string()),
        pa.array([float(x.sampled_at) for x in t], pa.float64()),
        pa.array([float(x.scored_at) for x in t], pa.float64()),
    ]
    metadata = {b"image_tokens_shape": json.dumps(list(shape)).encode()}
    return pa.RecordBatch.from_arrays(columns, schema=TRAJECTORY_SCHEMA.with_metadata(metadata))


def check_batch(batch: pa.RecordBatch | pa.Table) -> None:
    """Schema and per-row consistency (token, log-prob and mask lengths agree; tokens admitted)."""
    if batch.schema.remove_metadata() != TRAJECTORY_SCHEMA:
        have = {f.name: f for f in batch.schema}
        problems = [f"missing column {f.name!r}" for f in TRAJECTORY_SCHEMA if f.name not in have]
        problems += [f"column {f.name!r} is {have[f.name].type}{'' if have[f.name].nullable else ' not null'}, "
                     f"expected {f.type}{'' if f.nullable else ' not null'}"
                     for f in TRAJECTORY_SCHEMA if f.name in have and not have[f.name].equals(f)]
        problems += [f"unknown column {name!r}" for name in have if name not in TRAJECTORY_SCHEMA.names]
        if not problems:
            problems = ["columns out of order"]
        raise TrajectoryError("not a trajectory batch (TRAJECTORY_SCHEMA): " + "; ".join(problems[:4]))
    if batch.num_rows and _image_shape(batch) is None:
        raise TrajectoryError("trajectory batch without image_tokens_shape metadata")
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    lengths = [pc.list_value_length(table.column(c)).to_numpy(zero_copy_only=False)
               for c in ("tokens", "behaviour_logp", "valid_tokens")]
    bad = np.nonzero((lengths[0] != lengths[1]) | (lengths[0] != lengths[2]))[0]
    if bad.size:
        raise TrajectoryError(f"row {int(bad[0])}: tokens, behaviour_logp and valid_tokens differ in length")
    if table.num_rows:
        tokens = pc.list_flatten(table.column("tokens")).to_numpy(zero_copy_only=False)
        valid = pc.list_flatten(table.column("valid_tokens")).to_numpy(zero_copy_only=False)
        if tokens.size and (tokens >= valid).any():
            raise TrajectoryError("a token is not admitted by its slot's mask")
        logp = pc.list_flatten(table.column("behaviour_logp")).to_numpy(zero_copy_only=False)
        if not np.isfinite(logp).all() or (logp > 1e-4).any():
            raise TrajectoryError("behaviour_logp must be finite log-probabilities (<= 0)")


def _image_shape(batch) -> tuple[int, ...] | None:
    raw = (batch.schema.metadata or {}).get(b"image_tokens_shape")
    return tuple(json.loads(raw)) if raw else None


def trainable(table: pa.Table) -> np.ndarray:
    """Rows a policy update may use: ok ones, and failures caused by the sampled parameters."""
    ok = table.column("ok").to_numpy(zero_copy_only=False)
    failures = table.column("failure").to_pylist()
    return np.array([o or not (f or "").startswith(INFRASTRUCTURE_FAILURES) for o, f in zip(ok, failures)],
                    dtype=bool)


@dataclass
class TrajectoryTensors:
    """A table as padded tensors (B rows, S = longest sequence)."""

    batch: PolicyBatch              # structures, masks and tokens, collated
    image_tokens: torch.Tensor      # (B, T, C) float32
    behaviour_logp: torch.Tensor    # (B, S) float32, 0 at padding
    rewards: torch.Tensor           # (B,) float32
    versions: torch.Tensor          # (B,) long
    ok: torch.Tensor                # (B,) bool

    @property
    def size(self) -> int:
        return self.batch.size

    def to(self, device) -> "TrajectoryTensors":
        return TrajectoryTensors(self.batch.to(device), self.image_tokens.to(device),
                                 self.behaviour_logp.to(device), self.rewards.to(device),
                                 self.versions.to(device), self.ok.to(device))

    def select(self, index: torch.Tensor) -> "TrajectoryTensors":
        from dataclasses import fields, replace

        b = self.batch
        sub = replace(b, **{f.name: getattr(b, f.name)[index] for f in fields(b) if getattr(b, f.name) is not None})
        return TrajectoryTensors(sub, self.image_tokens[index], self.behaviour_logp[index], self.rewards[index],
                                 self.versions[index], self.ok[index])


class StructureCache:
    """Graph JSON -> GraphStructure under one vocabulary, tokenised once per distinct graph."""

    def __init__(self, vocab: Vocabulary, capacity: int = 4096):
        self.vocab = vocab
        self.capacity = capacity
        self._cache: dict[str, GraphStructure] = {}

    def get(self, graph_json: str) -> GraphStructure:
        key = hashlib.sha1(graph_json.encode()).hexdigest()
        structure = self._cache.get(key)
        if structure is None:
            if len(self._cache) >= self.capacity:
                self._cache.pop(next(iter(self._cache)))
            structure = self._cache[key] = GraphTokenizer(loads_graph(graph_json), self.vocab).structure()
        return structure


def to_tensors(table: pa.Table, structures: StructureCache) -> TrajectoryTensors:
    """Padded tensors of a whole table (rows in table order)."""
    if table.num_rows == 0:
        raise TrajectoryError("no trajectories to convert")
    shape = _image_shape(table)
    graphs = table.column("graph_json").to_pylist()
    tokens = table.column("tokens").to_pylist()
    rows = [structures.get(g) for g in graphs]
    for i, (structure, valid, toks) in enumerate(zip(rows, table.column("valid_tokens").to_pylist(), tokens)):
        if len(toks) != structure.num_slots:
            raise TrajectoryError(f"row {i}: {len(toks)} tokens for a structure of {structure.num_slots} slots")
        expected = structure.token_masks.sum(1)
        if not torch.equal(expected, torch.as_tensor(valid, dtype=expected.dtype)):
            raise TrajectoryError(f"row {i}: slot masks differ from its structure's (another vocabulary?)")
    policy_batch = collate(rows, tokens)
    b, s = policy_batch.size, policy_batch.num_slots
    logp = torch.zeros(b, s)
    for i, row in enumerate(table.column("behaviour_logp").to_pylist()):
        logp[i, :len(row)] = torch.as_tensor(row, dtype=torch.float32)
    # image tokens: decode each distinct target once
    images = table.column("image_tokens").combine_chunks()
    dictionary = images.dictionary.to_pylist()
    decoded = [torch.from_numpy(np.frombuffer(d, dtype=np.float16).reshape(shape).astype(np.float32, copy=True))
               for d in dictionary]
    index = images.indices.to_numpy(zero_copy_only=False)
    image_tokens = torch.stack([decoded[i] for i in index])
    return TrajectoryTensors(
        batch=policy_batch, image_tokens=image_tokens, behaviour_logp=logp,
        rewards=torch.tensor(table.column("reward").to_numpy(zero_copy_only=False), dtype=torch.float32),
        versions=torch.tensor(table.column("policy_version").to_numpy(zero_copy_only=False), dtype=torch.long),
        ok=torch.tensor(table.column("ok").to_numpy(zero_copy_only=False), dtype=torch.bool))
