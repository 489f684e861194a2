"""k-nearest-neighbour retrieval of graph structures for a photo (paper §5.2).

A real photo has no ground-truth structure, so the paper retrieves the k = 5 library structures
whose renders look most like it and draws one of them at random per sample. This module holds
that index: `per_graph` renders of every structure (random parameter draws around the authored
values, flash-lit like the photos), each embedded as the frozen encoder's pooled feature
(EfficientNet-Lite0's 1280-d mean of its 7×7 head grid by default, an open_clip embedding
optionally), L2-normalised. A query is embedded the same way; a structure's score is the best
cosine similarity over its renders (max, so one matching render of a varied structure suffices).

On disk an index is one Arrow IPC file (`save`/`load`):

    structure_id  string                                    one row per render
    embedding     fixed_size_list<float32 | float16>[D]     L2-normalised
    schema metadata b"matrl.retrieval" = JSON meta           format, encoder config, per_graph, res,
                                                             seed, created, structure and content
                                                             hashes per graph, kept/rejected renders

The package ships an index of the bundled library (`default_index()`, float16, ~1.5 MB) made by
`BUNDLED_INDEX_COMMAND`; it refuses to load once the library's graphs no longer match it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from graph_executor.degeneracy import DegeneracyConfig, material_degeneracy
from graph_executor.errors import GraphError
from graph_executor.executor import SUPPORTED_RES, Plan
from graph_executor.ir import Graph
from graph_executor.render import render_flash
from graph_executor.sampling import sample_parameters
from policy.encoders import EncoderConfig, ImageEncoder

__all__ = ["Retrieved", "RetrievalIndex", "RetrievalIndexError", "StaleIndexError", "draw_structure",
           "default_index", "as_image_tensor", "render_samples", "content_hash", "BUNDLED_INDEX_PATH",
           "BUNDLED_INDEX_COMMAND", "INDEX_FORMAT"]

log = logging.getLogger(__name__)

INDEX_FORMAT = "matrl.retrieval/1"
META_KEY = b"matrl.retrieval"
BUNDLED_INDEX_PATH = Path(__file__).resolve().parent / "data" / "library_index.arrow"
BUNDLED_INDEX_COMMAND = ("matrl index --graphs library --per-graph 8 --res 256 --seed 0 --dtype float16 "
                         "-o policy/data/library_index.arrow")
STORAGE_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


class RetrievalIndexError(ValueError):
    """An index file that is missing, corrupt or of another kind, or a bad query; names the culprit."""


class StaleIndexError(RetrievalIndexError):
    """The index was built from other graphs than the ones it is checked against."""


@dataclass(frozen=True)
class Retrieved:
    """One retrieved structure: its id and the best cosine similarity of its renders to the query."""

    structure_id: str
    score: float


def content_hash(graph: Graph) -> str:
    """Hash of what a render depends on: structure, authored parameter values and sampling meta.

    `Graph.structure_hash` ignores parameter values; a changed authored value moves every draw of
    the structure, so the index records both hashes. Name, category and description do not count.
    """
    data = graph.to_dict()
    payload = {"nodes": data["nodes"], "sampling": data["meta"].get("sampling")}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def graph_seed(seed: int, graph_id: str) -> int:
    """The seed of one graph's draws: depends on the graph's id only, so building an index over a
    subset of graphs gives exactly that subset's rows of the full index."""
    return zlib.crc32(f"{int(seed)}/{graph_id}".encode()) & 0x7FFFFFFF


def as_image_tensor(image: Any) -> torch.Tensor:
    """One image as a (3, H, W) float32 tensor in [0, 1].

    Accepts a PIL image, or a numpy array / torch tensor shaped (3,H,W), (H,W,3), (H,W,4) (alpha
    dropped), (1,H,W) or (H,W) (grey, repeated), of dtype uint8 (0..255) or float (0..1). A float
    image outside [0, 1] (a 0..255 float image, say) or with NaN is refused rather than clipped.
    A (3, H, 3) array is read as channels-first.
    """
    try:
        from PIL import Image
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.array(image))  # a copy: PIL-backed arrays are read-only
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
    else:
        raise RetrievalIndexError(f"an image must be a PIL image, numpy array or torch tensor, "
                                  f"got {type(image).__name__}")
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise RetrievalIndexError(f"an image must have 2 or 3 dimensions, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] in (1, 3):
        chw = tensor
    elif tensor.shape[-1] in (1, 3, 4):
        chw = tensor[..., :3].permute(2, 0, 1) if tensor.shape[-1] != 1 else tensor.permute(2, 0, 1)
    else:
        raise RetrievalIndexError(f"cannot tell the colour axis of an image shaped {tuple(tensor.shape)}: "
                                  "expected (3,H,W), (H,W,3), (H,W,4), (1,H,W) or (H,W)")
    if chw.shape[0] == 1:
        chw = chw.expand(3, -1, -1)
    if chw.dtype == torch.uint8:
        return chw.float() / 255.0
    if not chw.is_floating_point():
        raise RetrievalIndexError(f"image dtype {chw.dtype} is neither uint8 (0..255) nor float (0..1)")
    chw = chw.float()
    if not torch.isfinite(chw).all():
        raise RetrievalIndexError("image holds NaN or infinite values")
    low, high = float(chw.min()), float(chw.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise RetrievalIndexError(f"float image values must lie in [0, 1], got [{low:.3g}, {high:.3g}] "
                                  "(pass uint8 for 0..255 images)")
    return chw.clamp(0, 1).contiguous()


@lru_cache(maxsize=4)
def _shared_encoder(config_json: str, device: str) -> ImageEncoder:
    """Frozen encoders hold no state between calls, so indexes with the same config share one."""
    return EncoderConfig.model_validate_json(config_json).build().to(device)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class RetrievalIndex:
    """Embeddings of renders of graph structures, searched by cosine similarity.

    `structure_ids[i]` names the structure whose render gave `embeddings[i]` (several rows per
    structure). `meta` records how the index was made; its "encoder" is the EncoderConfig that
    `embed` rebuilds (lazily, on `device`) so queries land in the same space as the renders.
    """

    def __init__(self, structure_ids: Sequence[str], embeddings: np.ndarray, meta: dict, device: str = "cpu"):
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(structure_ids):
            raise RetrievalIndexError(f"embeddings of shape {embeddings.shape} do not match "
                                      f"{len(structure_ids)} structure ids")
        if len(structure_ids) == 0:
            raise RetrievalIndexError("an index needs at least one entry")
        if not np.isfinite(embeddings).all():
            raise RetrievalIndexError("embeddings hold NaN or infinite values")
        self.structure_ids: list[str] = [str(s) for s in structure_ids]
        self.embeddings: np.ndarray = _normalise(embeddings)
        self.meta: dict = meta
        self.device = str(device)
        self.encoder_config = EncoderConfig.model_validate(meta.get("encoder", {}))
        self._distinct = list(dict.fromkeys(self.structure_ids))
        position = {sid: i for i, sid in enumerate(self._distinct)}
        group = np.array([position[s] for s in self.structure_ids], dtype=np.int64)
        self._order = np.argsort(group, kind="stable")  # entries grouped by structure, for reduceat
        self._starts = np.searchsorted(group[self._order], np.arange(len(self._distinct)))
        self._grouped = np.ascontiguousarray(self.embeddings[self._order].T)  # (D, N), columns grouped
        self._encoder: ImageEncoder | None = None

    def __len__(self) -> int:
        return len(self.structure_ids)

    def __repr__(self) -> str:
        return (f"RetrievalIndex({len(self._distinct)} structures, {len(self)} entries, "
                f"dim {self.embeddings.shape[1]}, encoder {self.encoder_config.name})")

    def structures(self) -> list[str]:
        """The distinct structure ids, in the order of their first entry."""
        return list(self._distinct)

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def build(cls, graphs: dict[str, Graph], encoder_config: EncoderConfig = EncoderConfig(), per_graph: int = 8,
              res: int = 256, seed: int = 0, batch_size: int = 32, device: str = "cpu", progress: bool = True,
              max_attempts: float = 4.0) -> "RetrievalIndex":
        """Render `per_graph` informative parameter draws of every graph and embed them.

        Draws come from `graph_executor.sampling.sample_parameters` with a per-graph seed
        (`graph_seed`), each rendered with its own executor seed; degenerate renders (blank,
        constant, non-finite: `graph_executor.degeneracy`) and batches that fail to execute are
        skipped and counted in meta["rejected"], and more draws are made, up to
        `per_graph * max_attempts`. A graph left with no render is logged and listed in
        meta["missing"] (it can never be retrieved); none at all raises.
        """
        if per_graph < 1:
            raise ValueError(f"per_graph must be at least 1, got {per_graph}")
        if res not in SUPPORTED_RES:
            raise ValueError(f"res {res} is not supported; use one of {list(SUPPORTED_RES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not graphs:
            raise ValueError("no graphs to index")
        from tqdm import tqdm

        started = time.perf_counter()
        encoder = _shared_encoder(encoder_config.model_dump_json(), str(device))
        ids: list[str] = []
        chunks: list[np.ndarray] = []
        pending_ids: list[str] = []
        pending: list[torch.Tensor] = []
        kept: dict[str, int] = {}
        rejected: dict[str, dict[str, int]] = {}
        render_s = encode_s = 0.0

        def flush(force: bool) -> None:
            nonlocal encode_s
            while pending and (force or len(pending) >= batch_size):
                t0 = time.perf_counter()
                batch = torch.stack(pending[:batch_size])
                chunks.append(_embed_with(encoder, batch, str(device)))
                ids.extend(pending_ids[:batch_size])
                del pending[:batch_size], pending_ids[:batch_size]
                encode_s += time.perf_counter() - t0

        for gid, graph in tqdm(graphs.items(), desc="index", unit="graph", disable=not progress):
            t0 = time.perf_counter()
            images, reasons = render_samples(graph, gid, per_graph, res, seed, batch_size, device, max_attempts)
            render_s += time.perf_counter() - t0
            kept[gid] = len(images)
            if reasons:
                rejected[gid] = dict(reasons)
            pending.extend(images)
            pending_ids.extend([gid] * len(images))
            flush(force=False)
        flush(force=True)
        missing = [gid for gid, n in kept.items() if n == 0]
        if missing:
            log.warning("no informative render of %s: these graphs cannot be retrieved", ", ".join(missing))
        if not ids:
            raise RetrievalIndexError(f"no graph gave an informative render (rejected: {rejected})")
        meta = {
            "format": INDEX_FORMAT,
            "encoder": encoder_config.model_dump(mode="json"),
            "per_graph": per_graph, "res": res, "seed": seed,
            "created": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
            "structure_hashes": {gid: g.structure_hash() for gid, g in graphs.items()},
            "content_hashes": {gid: content_hash(g) for gid, g in graphs.items()},
            "kept": kept, "rejected": rejected, "missing": missing,
            "seconds": {"render": round(render_s, 2), "encode": round(encode_s, 2),
                        "total": round(time.perf_counter() - started, 2)},
            "device": str(device), "torch": torch.__version__,
        }
        index = cls(ids, np.concatenate(chunks), meta, device=str(device))
        index._encoder = encoder
        return index

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: str | Path, dtype: str = "float32") -> Path:
        """Write the Arrow IPC file atomically (temporary file, then rename). `dtype` float16 halves
        the file; retrieval from it matches float32 within the test's tolerance."""
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
        path = Path(path)
        dim = self.embeddings.shape[1]
        values = pa.array(self.embeddings.astype(dtype).reshape(-1), type=STORAGE_DTYPES[dtype])
        table = pa.table({"structure_id": pa.array(self.structure_ids, type=pa.string()),
                          "embedding": pa.FixedSizeListArray.from_arrays(values, dim)})
        meta = dict(self.meta, storage_dtype=dtype, embedding_dim=dim)
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "RetrievalIndex":
        """Read an index written by `save`; anything else raises RetrievalIndexError naming `path`."""
        path = Path(path)
        if not path.is_file():
            raise RetrievalIndexError(f"retrieval index {path} does not exist")
        try:
            with pa.memory_map(str(path), "r") as source:
                table = pa.ipc.open_file(source).read_all()
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
            raise RetrievalIndexError(f"{path} is not an Arrow IPC retrieval index: {err}") from None
        raw = (table.schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise RetrievalIndexError(f"{path} is an Arrow file but not a retrieval index (no {META_KEY.decode()} "
                                      "metadata)")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RetrievalIndexError(f"{path}: index metadata is not JSON: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else meta
            raise RetrievalIndexError(f"{path}: index format {found!r}, this code reads {INDEX_FORMAT!r}")
        problems = _schema_problems(table.schema)
        if problems:
            raise RetrievalIndexError(f"{path}: {problems}")
        column = table.column("embedding").combine_chunks()
        dim = column.type.list_size
        if meta.get("embedding_dim") not in (None, dim):
            raise RetrievalIndexError(f"{path}: embedding width {dim} but metadata says {meta['embedding_dim']}")
        if column.null_count or table.column("structure_id").null_count:
            raise RetrievalIndexError(f"{path}: null entries in the index")
        embeddings = column.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        ids = table.column("structure_id").to_pylist()
        unknown = sorted(set(ids) - set(meta.get("structure_hashes", {})))
        if unknown:
            raise RetrievalIndexError(f"{path}: entries name structures missing from its metadata: {unknown[:5]}")
        try:
            return cls(ids, embeddings, meta, device=device)
        except RetrievalIndexError as err:
            raise RetrievalIndexError(f"{path}: {err}") from None
        except ValueError as err:  # a bad encoder config in the metadata
            raise RetrievalIndexError(f"{path}: bad encoder config in the metadata: {err}") from None

    def check_graphs(self, graphs: dict[str, Graph]) -> list[str]:
        """Differences between the graphs this index was built from and `graphs` (empty: current)."""
        structure = self.meta.get("structure_hashes", {})
        content = self.meta.get("content_hashes", {})
        problems = []
        added, removed = sorted(set(graphs) - set(structure)), sorted(set(structure) - set(graphs))
        if added:
            problems.append(f"graphs not in the index: {', '.join(added)}")
        if removed:
            problems.append(f"indexed graphs that no longer exist: {', '.join(removed)}")
        changed = [gid for gid in sorted(set(graphs) & set(structure))
                   if graphs[gid].structure_hash() != structure[gid] or content_hash(graphs[gid]) != content.get(gid)]
        if changed:
            problems.append(f"graphs changed since the index was built: {', '.join(changed)}")
        return problems

    # -- queries --------------------------------------------------------------------------------

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            self._encoder = _shared_encoder(self.encoder_config.model_dump_json(), self.device)
        return self._encoder

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """Images (B, 3, H, W) in [0, 1] -> L2-normalised pooled embeddings (B, D) float32, encoded
        in chunks of the encoder config's batch size."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise RetrievalIndexError(f"embed expects a (B, 3, H, W) tensor in [0, 1], got {shape}")
        step = self.encoder_config.batch_size
        out = [_embed_with(self.encoder, images[i:i + step], self.device) for i in range(0, len(images), step)]
        embedded = np.concatenate(out) if out else np.zeros((0, self.embeddings.shape[1]), np.float32)
        if embedded.shape[1] != self.embeddings.shape[1]:
            raise RetrievalIndexError(f"the encoder gives {embedded.shape[1]}-d embeddings, the index holds "
                                      f"{self.embeddings.shape[1]}-d ones")
        return embedded

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Per query and distinct structure (B, S): the best cosine similarity over its renders."""
        sims = np.asarray(embeddings, np.float32) @ self._grouped  # (B, N), columns grouped by structure
        return np.maximum.reduceat(sims, self._starts, axis=1)

    def retrieve(self, image: Any, k: int = 5) -> list[Retrieved]:
        """The k most similar distinct structures to one image, best first (see `as_image_tensor`)."""
        return self.retrieve_batch([image], k)[0]

    def retrieve_batch(self, images: Any, k: int = 5) -> list[list[Retrieved]]:
        """`retrieve` for a (B, 3, H, W) tensor or a sequence of images (sizes may differ)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RetrievalIndexError(f"k must be a positive integer, got {k!r}")
        if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim != 4:
            raise RetrievalIndexError(f"retrieve_batch takes a batch (B, 3, H, W) or a list of images, got shape "
                                      f"{tuple(images.shape)}; use retrieve for one image")
        tensors = [as_image_tensor(img) for img in images]
        if not tensors:
            return []
        embedded = np.zeros((len(tensors), self.embeddings.shape[1]), np.float32)
        by_shape: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            by_shape.setdefault(tuple(t.shape), []).append(i)
        for rows in by_shape.values():
            embedded[rows] = self.embed(torch.stack([tensors[i] for i in rows]))
        return self.retrieve_embedded(embedded, k)

    def retrieve_embedded(self, embeddings: np.ndarray, k: int = 5) -> list[list[Retrieved]]:
        """`retrieve_batch` for queries already embedded (B, D) by this index's encoder (L2-normalised
        here), e.g. pooled features a caller computed anyway with the same encoder."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RetrievalIndexError(f"k must be a positive integer, got {k!r}")
        embedded = _normalise(np.atleast_2d(embeddings))
        if embedded.shape[1] != self.embeddings.shape[1]:
            raise RetrievalIndexError(f"queries of width {embedded.shape[1]} for an index of "
                                      f"{self.embeddings.shape[1]}-d embeddings")
        scores = self.scores(embedded)
        k = min(k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[Retrieved(self._distinct[j], float(scores[b, j])) for j in order[b]] for b in range(len(order))]


def draw_structure(retrieved: list[Retrieved], rng: random.Random) -> str:
    """One of the retrieved structures, uniformly (the paper draws one of its k = 5 per sample)."""
    if not retrieved:
        raise RetrievalIndexError("no retrieved structures to draw from")
    return retrieved[rng.randrange(len(retrieved))].structure_id


def library_structures(image: Any, k: int) -> list[Graph]:
    """The k library graphs nearest to `image` in the bundled index, nearest first: the retrieval
    function of `python -m learner.pretrain_eval --real-photos` (`--retrieval
    policy.retrieval:library_structures`, its default)."""
    from graph_executor.library import library_graphs

    graphs = library_graphs()
    return [graphs[r.structure_id] for r in default_index().retrieve(image, k)]


@lru_cache(maxsize=2)
def default_index(device: str = "cpu") -> RetrievalIndex:
    """The bundled index of the bundled library (offline), checked against the current library.

    Shared between callers (cached): treat it as read-only. Raises StaleIndexError when a library
    graph was added, removed or changed since the file was built.
    """
    from graph_executor.library import library_graphs

    index = RetrievalIndex.load(BUNDLED_INDEX_PATH, device=device)
    problems = index.check_graphs(library_graphs())
    if problems:
        raise StaleIndexError(f"the bundled retrieval index {BUNDLED_INDEX_PATH} is stale ({'; '.join(problems)}); "
                              f"rebuild it from the repository root with `{BUNDLED_INDEX_COMMAND}`")
    return index


def _schema_problems(schema: pa.Schema) -> str:
    names = set(schema.names)
    if {"structure_id", "embedding"} - names:
        return f"columns {sorted(names)}; a retrieval index has structure_id and embedding"
    if not pa.types.is_string(schema.field("structure_id").type):
        return f"structure_id has type {schema.field('structure_id').type}, expected string"
    emb = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(emb) or emb.value_type not in STORAGE_DTYPES.values():
        return f"embedding has type {emb}, expected fixed_size_list<float32 or float16>"
    return ""


def _embed_with(encoder: ImageEncoder, images: torch.Tensor, device: str) -> np.ndarray:
    with torch.no_grad():
        pooled = encoder(images.to(device=device, dtype=torch.float32)).pooled.float()
    return _normalise(pooled.cpu().numpy())


def render_samples(graph: Graph, gid: str, per_graph: int, res: int, seed: int, batch_size: int = 32,
                   device: str = "cpu", max_attempts: float = 4.0) -> tuple[list[torch.Tensor], Counter]:
    """Up to `per_graph` informative flash renders (3, res, res) on the CPU, and why others were dropped.

    The draws of graph `gid` under `seed` are the ones `RetrievalIndex.build` indexes; another seed
    gives fresh draws (fresh parameters and executor seeds) of the same structure."""
    plan = Plan(graph)
    gseed = graph_seed(seed, gid)
    budget = max(per_graph, int(per_graph * max_attempts))
    draws = sample_parameters(graph, budget, gseed)
    images: list[torch.Tensor] = []
    rejected: Counter[str] = Counter()
    pos = 0
    while pos < budget and len(images) < per_graph:
        lo = pos
        batch = draws[lo:lo + min(batch_size, per_graph - len(images))]
        pos += len(batch)
        seeds = [(gseed + 7919 * (lo + i)) & 0x7FFFFFFF for i in range(len(batch))]
        try:
            maps = plan.run(plan.stack(batch, device=device), res=res, seed=seeds, device=device)
            rendered = render_flash(maps)
        except (GraphError, RuntimeError) as err:
            rejected[f"error: {type(err).__name__}"] += len(batch)
            log.debug("graph %s: batch failed: %s", gid, err)
            continue
        for i, reason in enumerate(material_degeneracy(maps, rendered, DegeneracyConfig())):
            if reason is not None:
                rejected[reason] += 1
            elif len(images) < per_graph:
                images.append(rendered[i].float().cpu())
    return images, rejected
