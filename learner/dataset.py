"""Synthetic (image, parameter tokens) dataset: on-disk layout, split by structure, Parquet shards, torch views.

Layout of a dataset directory (see docs/dataset.md):

    manifest.json                 what was asked for, every graph's structure hash and split
    graphs/<graph_id>.json        every graph, so the dataset is self-contained (generated ones too)
    <split>/<graph_id>-<k>.parquet one shard per (graph, k) unit of work, written atomically

A shard exists only once it is complete (written to a temporary name, then renamed), so the set
of shard files is the record of finished work and an interrupted run resumes by skipping them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from pydantic import BaseModel, Field, ValidationError, model_validator

from graph_executor.ir import Graph, load_graph

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT = "matrl.synthetic/1"

SAMPLE_SCHEMA = pa.schema([
    ("graph_id", pa.string()),
    ("structure_hash", pa.string()),
    ("split", pa.string()),
    ("sample_index", pa.int64()),
    ("seed", pa.int64()),
    ("tokens", pa.list_(pa.int16())),
    ("params", pa.string()),
    ("image", pa.binary()),
])
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class DatasetError(ValueError):
    """A dataset directory or request that cannot be used as asked; the message names the culprit."""


class SplitFractions(BaseModel):
    train: float = Field(0.90, ge=0)
    val: float = Field(0.05, ge=0)
    test: float = Field(0.05, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {self.train}+{self.val}+{self.test}")
        return self


class GraphEntry(BaseModel):
    structure_hash: str
    split: str
    source: str  # "library" or "generated"


class DatasetManifest(BaseModel):
    """What a dataset directory holds; a resumed run must ask for the same thing."""

    format: str = FORMAT
    res: int
    per_graph: int
    shard_size: int
    seed: int
    fractions: SplitFractions = SplitFractions()
    graphs: dict[str, GraphEntry]

    def units(self) -> list[tuple[str, int]]:
        """Every (graph id, shard index) unit of work, in a stable order."""
        per = -(-self.per_graph // self.shard_size)
        return [(gid, k) for gid in sorted(self.graphs) for k in range(per)]

    def unit_size(self, shard: int) -> int:
        return min(self.shard_size, self.per_graph - shard * self.shard_size)

    def structures(self, split: str) -> set[str]:
        return {e.structure_hash for e in self.graphs.values() if e.split == split}


def check_graph_id(graph_id: str) -> str:
    if not _SAFE_ID.match(graph_id):
        raise DatasetError(f"graph id {graph_id!r} cannot name a file: use letters, digits, '_', '-', '.'")
    return graph_id


def assign_splits(structure_hashes: Iterable[str], fractions: SplitFractions = SplitFractions(),
                  seed: int = 0) -> dict[str, str]:
    """Give every distinct structure one split, so no structure appears in two splits.

    Structures are ordered by a salted hash (so the assignment does not follow library order) and
    cut by the fractions; with three or more structures val and test get at least one each (when
    their fraction is non-zero), so a small library still has held-out structures.
    """
    hashes = sorted(set(structure_hashes),
                    key=lambda h: hashlib.sha1(f"{seed}:{h}".encode()).hexdigest())
    n = len(hashes)
    held = {}
    for split in ("test", "val"):
        frac = getattr(fractions, split)
        count = round(n * frac)
        if frac > 0 and n >= 3:
            count = max(1, count)
        held[split] = count
    if held["test"] + held["val"] >= n and n > 0:
        raise DatasetError(f"{n} structures are too few for fractions {fractions.model_dump()}")
    out = {}
    for i, h in enumerate(hashes):
        out[h] = "test" if i < held["test"] else "val" if i < held["test"] + held["val"] else "train"
    return out


def unit_seed(dataset_seed: int, graph_id: str, shard: int) -> int:
    """A stable seed for one unit of work, independent of which process renders it."""
    digest = hashlib.sha1(f"{dataset_seed}:{graph_id}:{shard}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def shard_path(root: str | Path, split: str, graph_id: str, shard: int) -> Path:
    return Path(root) / split / f"{check_graph_id(graph_id)}-{shard:05d}.parquet"


def graph_path(root: str | Path, graph_id: str) -> Path:
    return Path(root) / "graphs" / f"{check_graph_id(graph_id)}.json"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_manifest(root: str | Path, manifest: DatasetManifest) -> None:
    _atomic_write_bytes(Path(root) / MANIFEST, manifest.model_dump_json(indent=1).encode())


def load_manifest(root: str | Path) -> DatasetManifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path} does not exist: not a dataset directory (run `matrl gen-data`)")
    try:
        manifest = DatasetManifest.model_validate_json(path.read_bytes())
    except ValidationError as err:  # pydantic's parser also refuses deep nesting and huge numbers
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DatasetError(f"{path}: not a valid manifest ({where + ': ' if where else ''}{first['msg']}; "
                           f"{err.error_count()} problem(s))") from None
    if manifest.format != FORMAT:
        raise DatasetError(f"{path}: format {manifest.format!r}, expected {FORMAT!r}")
    return manifest


def save_graph(root: str | Path, graph_id: str, graph: Graph) -> None:
    _atomic_write_bytes(graph_path(root, graph_id), graph.to_json().encode())


def load_graphs(root: str | Path) -> dict[str, Graph]:
    """Every graph of a dataset, by id (parsed and validated again)."""
    manifest = load_manifest(root)
    return {gid: load_graph(graph_path(root, gid)) for gid in sorted(manifest.graphs)}


def encode_png(image: np.ndarray) -> bytes:
    """(H,W,3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H,W,3) uint8."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3,H,W) float in [0,1] -> (H,W,3) uint8."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@dataclass
class SampleRecord:
    graph_id: str
    structure_hash: str
    split: str
    sample_index: int
    seed: int
    tokens: list[int]
    params: dict[str, dict[str, Any]]
    image: bytes


def write_shard(path: str | Path, records: list[SampleRecord], metadata: dict[bytes, bytes] | None = None) -> None:
    """Write one shard atomically: readers and resumed runs never see a partial file."""
    path = Path(path)
    columns = {name: [] for name in SAMPLE_SCHEMA.names}
    for r in records:
        for name in SAMPLE_SCHEMA.names:
            value = getattr(r, name)
            columns[name].append(json.dumps(value, sort_keys=True) if name == "params" else value)
    table = pa.Table.from_pydict(columns, schema=SAMPLE_SCHEMA.with_metadata(metadata or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def remove_partial_files(root: str | Path) -> int:
    """Delete temporary files left by an interrupted run; returns how many."""
    removed = 0
    for split in SPLITS:
        for tmp in (Path(root) / split).glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def shard_files(root: str | Path, split: str) -> list[Path]:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return sorted((Path(root) / split).glob("*.parquet"))


def read_split(root: str | Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of one split as one Arrow table (PNG bytes stay compressed)."""
    files = shard_files(root, split)
    if not files:
        return SAMPLE_SCHEMA.empty_table().select(columns or SAMPLE_SCHEMA.names)
    return pa.concat_tables([pq.read_table(f, columns=columns, schema=SAMPLE_SCHEMA) for f in files])


def _example(row: dict) -> dict:
    image = torch.from_numpy(decode_png(row["image"]).copy()).permute(2, 0, 1).float() / 255.0
    return {"graph_id": row["graph_id"], "tokens": torch.tensor(row["tokens"], dtype=torch.long),
            "image": image, "seed": row["seed"], "params": row["params"]}


class SyntheticDataset(torch.utils.data.Dataset):
    """One split held in memory as Arrow columns; an item decodes its PNG on access.

    Item: {"graph_id": str, "tokens": LongTensor (L,), "image": FloatTensor (3,H,W) in [0,1],
    "seed": int, "params": JSON str}.
    """

    def __init__(self, root: str | Path, split: str, graph_ids: Iterable[str] | None = None):
        self.root = Path(root)
        self.split = split
        self.manifest = load_manifest(root)
        table = read_split(root, split)
        if graph_ids is not None:
            keep = set(graph_ids)
            mask = pa.array([g in keep for g in table.column("graph_id").to_pylist()])
            table = table.filter(mask)
        self.table = table.combine_chunks()
        self.graph_ids: list[str] = table.column("graph_id").to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return _example({name: self.table.column(name)[index].as_py() for name in self.table.column_names})


class StreamingSyntheticDataset(torch.utils.data.IterableDataset):
    """Streams one split shard by shard, for datasets larger than memory.

    Shards are shuffled per epoch (`set_epoch`) and divided among distributed ranks and DataLoader
    workers, and rows are mixed through a shuffle buffer; every shard is read by exactly one
    (rank, worker).
    """

    def __init__(self, root: str | Path, split: str, shuffle_buffer: int = 1024, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.files = shard_files(root, split)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._row_counts: dict[Path, int] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shuffled(self) -> list[Path]:
        files = list(self.files)
        random.Random(self.seed + self.epoch).shuffle(files)
        return files

    def rows_per_rank(self, loader_workers: int = 0) -> list[int]:
        """Rows each rank streams this epoch when read by `loader_workers` DataLoader processes
        (from the Parquet footers); DDP ranks must stop after the same number of batches."""
        workers = max(1, loader_workers)
        counts = [0] * self.world_size
        for i, path in enumerate(self._shuffled()):
            if path not in self._row_counts:
                self._row_counts[path] = pq.read_metadata(path).num_rows
            counts[(i % (self.world_size * workers)) // workers] += self._row_counts[path]
        return counts

    def _my_files(self) -> list[Path]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        stride = self.world_size * workers
        return self._shuffled()[self.rank * workers + worker::stride]

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}")
        buffer: list[dict] = []
        for path in self._my_files():
            for row in pq.read_table(path, schema=SAMPLE_SCHEMA).to_pylist():
                buffer.append(row)
                if len(buffer) >= self.shuffle_buffer:
                    yield _example(buffer.pop(rng.randrange(len(buffer))))
        rng.shuffle(buffer)
        for row in buffer:
            yield _example(row)
