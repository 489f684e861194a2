"""Online synthetic data: every training batch is made on the training device when it is needed.

The executor renders ~21,000 samples/s on one H200, so pre-training at the paper's scale (10 M
pairs) needs no stored dataset: for step `s` on rank `r` the stream

1. draws a few structures (`structures_per_chunk`): a library graph with probability
   `library_weight`, else a random structure (`graph_executor.random_graphs`) from the training
   seed range; held-out structures are never drawn;
2. draws `samples_per_structure` parameter sets for each (`graph_executor.sampling.TensorSampler`,
   the rules of `sample_parameters` as tensor ops) and quantises them to tokens
   (`policy.tensor_codec`): the images are rendered from the de-quantised values, so the tokens
   describe them exactly, as in `learner.datagen`;
3. executes each structure's parameter sets as one tensor program (`Plan.run`, optionally
   torch.compiled) and renders them with a per-sample flash position (`learner.augment`);
4. drops degenerate samples (blank, constant, non-finite; `graph_executor.degeneracy.material_ok`),
   applies the photo-like augmentation and encodes the images with the frozen encoder;
5. shuffles this chunk of samples and cuts it into training batches (`OnlineSyntheticStream`).

Nothing is written to disk. Every random choice of chunk c on rank r comes from generators seeded
by (seed, rank, c), so the batch of step s is a pure function of (seed, rank, s): an interrupted
run resumes exactly, and ranks draw different streams. The validation set is fixed by the config: the
held-out structures (library names and a range of random-structure seeds) with a fixed number of
samples each, made once at start-up; training never draws a structure whose skeleton (node
types and wiring, names ignored) matches a held-out one.

Structures are built on the host (a random one runs its 64² degeneracy check, ~30 ms on one CPU
core) and cached; `prefetch_structures` builds those of the next chunks in a background thread,
and `BatchPrefetcher` makes the next chunk (on its own CUDA stream) while the current one trains.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from graph_executor.compiled import compiled
from graph_executor.degeneracy import material_ok
from graph_executor.errors import GraphError
from graph_executor.executor import SUPPORTED_RES, Plan
from graph_executor.ir import Graph
from graph_executor.library import library_names, load_library_graph
from graph_executor.random_graphs import random_graph
from graph_executor.render import render_flash
from graph_executor.sampling import TensorSampler
from learner.augment import AugmentConfig, augment, flash_positions
from policy.batching import PolicyBatch, collate
from policy.tensor_codec import TensorCodec
from policy.tokenizer import GraphStructure, GraphTokenizer, Vocabulary

PHASES = ("structures", "params", "execute", "render", "check", "augment", "encode")
_TRAINING, _VALIDATION = 0, 1  # domains, then purposes, mixed into the per-step seeds
_STRUCTURES, _PARAMS, _FLASH, _AUGMENT, _SHUFFLE = 1, 2, 3, 4, 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeldOutConfig(_Strict):
    """Structures kept out of training: the validation set, and never a training draw."""

    library: list[str] = Field(default_factory=list, description="library graph names held out")
    random_seeds: tuple[int, int] = Field((0, 0), description="[start, stop) of random-structure seeds held out")


class OnlineDataConfig(_Strict):
    """`data.source: online` in a pre-training config (see the module docstring)."""

    source: Literal["online"] = "online"
    res: int = Field(256, description="render resolution (64..2048, a power of two)")
    structures_per_chunk: int = Field(4, gt=0, description="structures drawn per chunk of samples; each executes "
                                      "its samples_per_structure parameter sets as one tensor program")
    samples_per_structure: int | None = Field(None, gt=0, description="parameter sets per structure and chunk "
                                              "(None: batch_size / structures_per_chunk, one chunk per step); a chunk "
                                              "is shuffled and cut into training batches")
    library_weight: float = Field(0.5, ge=0, le=1, description="chance that a drawn structure is a library graph")
    library: list[str] | None = Field(None, description="library graphs to train on (None: the whole library)")
    random_seeds: tuple[int, int] = Field((1_000_000, 2_000_000_000),
                                          description="[start, stop) of random-structure seeds drawn for training")
    held_out: HeldOutConfig = HeldOutConfig()
    val_samples_per_structure: int = Field(16, gt=0)
    reject_degenerate: bool = Field(True, description="drop blank, constant and non-finite samples")
    compile: bool = Field(False, description="torch.compile the node functions and the renderer (CUDA)")
    prefetch_structures: int = Field(2, ge=0, description="chunks whose structures a background thread builds ahead")
    prefetch_chunks: int = Field(1, ge=0, description="chunks a background thread makes ahead (on its own CUDA "
                                 "stream) while the current one trains; 0: make each when it is first needed")
    structure_cache: int = Field(1024, gt=0, description="built structures kept in memory (LRU)")
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _check(self) -> "OnlineDataConfig":
        if self.res not in SUPPORTED_RES:
            raise ValueError(f"res {self.res} is not supported; use one of {list(SUPPORTED_RES)}")
        names = set(library_names())
        for key, listed in (("library", self.library or []), ("held_out.library", self.held_out.library)):
            unknown = sorted(set(listed) - names)
            if unknown:
                raise ValueError(f"{key} names graphs that are not in the library: {unknown}")
        lo, hi = self.random_seeds
        held_lo, held_hi = self.held_out.random_seeds
        if not 0 <= lo < hi or not 0 <= held_lo <= held_hi:
            raise ValueError(f"seed ranges must be [start, stop) with 0 <= start < stop: random_seeds "
                             f"{list(self.random_seeds)}, held_out.random_seeds {list(self.held_out.random_seeds)}")
        if held_lo < hi and lo < held_hi:
            raise ValueError(f"random_seeds {list(self.random_seeds)} overlaps held_out.random_seeds "
                             f"{list(self.held_out.random_seeds)}")
        if self.library_weight > 0 and not set(self.library or names) - set(self.held_out.library):
            raise ValueError("library_weight > 0 but every library graph listed is held out")
        if self.library_weight < 1 and lo == hi:
            raise ValueError("library_weight < 1 needs a non-empty random_seeds range")
        return self


def skeleton_key(graph: Graph) -> str:
    """Node types and wiring in topological order, names ignored: what the policy sees of a structure.
    Coarser than `Graph.structure_hash` (which includes node names), so it also catches a random
    structure that repeats a held-out one under other names."""
    index = {name: i for i, name in enumerate(graph.nodes)}
    skeleton = [(n.type, sorted((port, index[ref.node], ref.port) for port, ref in n.inputs.items()))
                for n in graph.nodes.values()]
    return hashlib.sha1(json.dumps(skeleton).encode()).hexdigest()[:16]


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, rank, step, purpose...): independent streams per tuple."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


@dataclass
class Structure:
    """One structure ready to sample: graph, its policy tensors, its samplers and plan."""

    key: tuple[str, str | int]  # ("library", name) or ("random", seed)
    graph: Graph
    skeleton: str
    structure: GraphStructure
    sampler: TensorSampler
    codec: TensorCodec

    @property
    def plan(self) -> Plan:
        return self.codec.plan

    @classmethod
    def build(cls, key: tuple[str, str | int], vocab: Vocabulary) -> "Structure":
        graph = load_library_graph(key[1]) if key[0] == "library" else random_graph(int(key[1]))
        tokenizer = GraphTokenizer(graph, vocab)
        sampler = TensorSampler(graph)
        if sampler.columns != [(s.node, s.param, s.component) for s in tokenizer.slots]:
            raise GraphError(f"{key}: parameter sampler and tokenizer disagree on the slot order")
        return cls(key, graph, skeleton_key(graph), tokenizer.structure(), sampler, TensorCodec(tokenizer))


class StructurePool:
    """Training and held-out structures; builds and caches them (thread-safe LRU)."""

    def __init__(self, config: OnlineDataConfig, vocab: Vocabulary):
        self.config = config
        self.vocab = vocab
        self._cache: OrderedDict[tuple, Structure | GraphError] = OrderedDict()
        self._lock = threading.Lock()
        held = config.held_out
        self.held_out_keys = ([("library", name) for name in held.library]
                              + [("random", seed) for seed in range(*held.random_seeds)])
        self.held_out = [self.get(key) for key in self.held_out_keys]
        for key, s in zip(self.held_out_keys, self.held_out):
            if isinstance(s, GraphError):
                raise ValueError(f"held-out structure {key} cannot be built: {s}")
        self.held_out_skeletons = {s.skeleton for s in self.held_out}
        candidates = [n for n in (config.library or library_names()) if n not in held.library]
        self.library = [n for n in candidates if skeleton_key(load_library_graph(n)) not in self.held_out_skeletons]
        self.rejected_draws = 0

    def get(self, key: tuple[str, str | int]) -> Structure | GraphError:
        """The built structure (or the GraphError a random seed gives); built at most once while cached."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            built: Structure | GraphError = Structure.build(key, self.vocab)
        except GraphError as err:
            built = err
        with self._lock:
            self._cache[key] = built
            while len(self._cache) > self.config.structure_cache + len(self.held_out_keys):
                self._cache.popitem(last=False)
        return built

    def draw(self, rng: np.random.Generator) -> Structure:
        """A training structure: library or random, never held out (redrawn from `rng` when it is)."""
        lo, hi = self.config.random_seeds
        for _ in range(1000):
            if self.library and rng.random() < self.config.library_weight:
                key: tuple = ("library", self.library[int(rng.integers(len(self.library)))])
            else:
                key = ("random", int(rng.integers(lo, hi)))
            built = self.get(key)
            if isinstance(built, Structure) and built.skeleton not in self.held_out_skeletons:
                return built
            self.rejected_draws += 1
        raise RuntimeError("1000 structure draws in a row were held out or failed to build; check data.held_out")


@dataclass
class OnlineBatch:
    """One batch on the training device: tokens and structure tensors, image tokens (or images)."""

    policy: PolicyBatch
    images: torch.Tensor | None  # (B,3,H,W) in [0,1]; None once encoded (the trainer needs the tokens only)
    image_tokens: torch.Tensor | None
    keys: list[tuple]  # the structure of each sample
    drawn: float  # samples drawn for this batch before degenerate ones were dropped (a chunk's share)
    seconds: dict[str, float] = field(default_factory=dict)  # per phase, when profiling

    @property
    def size(self) -> int:
        return self.policy.size

    def select(self, index: torch.Tensor, drawn: float) -> "OnlineBatch":
        rows = index.tolist()
        return OnlineBatch(self.policy.select(index),
                           None if self.images is None else self.images[index.to(self.images.device)],
                           None if self.image_tokens is None else self.image_tokens[index.to(self.image_tokens.device)],
                           [self.keys[i] for i in rows], drawn)


class OnlineSyntheticStream:
    """Batches of (image tokens, structure, parameter tokens) made on the fly; see the module docstring.

    Samples are made in chunks: `structures_per_chunk` structures x `samples_per_structure`
    parameter sets, each structure's sets executed as one tensor program (the executor needs
    ~1,000 samples per program to reach its speed on a GPU: 4.7 k samples/s at 256 per program,
    14.7 k at 1,024, 19.6 k at 4,096, compiled, docs/benchmarks.md). A chunk is shuffled and cut
    into `chunk_steps` training batches, so each batch still mixes every structure of its chunk.
    Step s uses chunk s // chunk_steps; chunk c is a pure function of (seed, rank, c).

    `encode` maps images (B,3,H,W) in [0,1] to image tokens (the trainer's frozen encoder, called on
    at most `encode_batch` images at a time); without it batches carry images. `profile=True`
    synchronises the device after every phase so that `OnlineBatch.seconds` is a true per-phase
    breakdown (benchmarks); training leaves it off.
    """

    def __init__(self, config: OnlineDataConfig, vocab: Vocabulary, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None, encode_batch: int = 512,
                 profile: bool = False):
        self.config = config
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.encode = encode
        self.encode_batch = encode_batch
        self.profile = profile
        per_structure = config.samples_per_structure or -(-batch_size // config.structures_per_chunk)
        chunk = per_structure * config.structures_per_chunk
        if chunk % batch_size:
            raise ValueError(f"data.structures_per_chunk x data.samples_per_structure = {chunk} samples must be a "
                             f"multiple of train.batch_size {batch_size}")
        self.samples_per_structure = per_structure
        self.chunk_steps = chunk // batch_size
        self.pool = StructurePool(config, vocab)
        self._render = compiled(render_flash) if config.compile else render_flash
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="structures") if config.prefetch_structures else None
        self._ahead: dict[int, Future] = {}
        self._chunk: tuple[int, OnlineBatch, list[torch.Tensor]] | None = None

    # ---- structures -----------------------------------------------------------------------------
    def structures_for(self, chunk: int) -> list[Structure]:
        """The structures of chunk `chunk` on this rank (a pure function of seed, rank and chunk)."""
        rng = np.random.default_rng(step_seed(self.seed, _TRAINING, self.rank, chunk, _STRUCTURES))
        return [self.pool.draw(rng) for _ in range(self.config.structures_per_chunk)]

    def _structures(self, chunk: int) -> list[Structure]:
        future = self._ahead.pop(chunk, None)
        if self._executor is not None:
            for ahead in range(chunk + 1, chunk + 1 + self.config.prefetch_structures):
                if ahead not in self._ahead:
                    self._ahead[ahead] = self._executor.submit(self.structures_for, ahead)
            for stale in [c for c in self._ahead if c < chunk]:
                self._ahead.pop(stale).cancel()
        return future.result() if future is not None else self.structures_for(chunk)

    # ---- samples --------------------------------------------------------------------------------
    def _tick(self, seconds: dict[str, float], phase: str, started: float) -> float:
        if self.profile:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            seconds[phase] = seconds.get(phase, 0.0) + now - started
            return now
        return started

    def _generators(self, domain: int, a: int, b: int) -> tuple[torch.Generator, ...]:
        """Generators on the device for parameters, flash positions and augmentation of (domain,
        rank, chunk) or (domain, held-out index, 0): separate streams, so switching an augmentation
        off leaves the drawn samples as they were."""
        return tuple(torch.Generator(self.device).manual_seed(step_seed(self.seed, domain, a, b, purpose))
                     for purpose in (_PARAMS, _FLASH, _AUGMENT))

    def _make(self, structures: list[Structure], n: int, generators: tuple[torch.Generator, ...],
              seconds: dict[str, float], started: float) -> OnlineBatch:
        """Draw, execute, render, check, augment and encode `n` samples of each structure."""
        cfg = self.config
        params_rng, flash_rng, augment_rng = generators
        images, tokens, groups, encoded = [], [], [], []
        for g, s in enumerate(structures):
            values = s.sampler.draw(n, params_rng)
            drawn = s.codec.quantise(values)
            params = s.codec.param_tensors(s.codec.dequantise(drawn))
            noise_seeds = torch.randint(0, 2**31 - 1, (n,), generator=params_rng, device=self.device)
            light = flash_positions(n, cfg.augment, flash_rng)
            started = self._tick(seconds, "params", started)
            maps = s.plan.run(params, res=cfg.res, seed=noise_seeds, device=self.device, compile=cfg.compile)
            started = self._tick(seconds, "execute", started)
            rendered = self._render(maps, light=light) if light is not None else self._render(maps)
            started = self._tick(seconds, "render", started)
            if cfg.reject_degenerate:
                keep = material_ok(maps, rendered)
                if not bool(keep.any()):  # never an empty group: every DDP rank must take its step
                    keep = torch.ones_like(keep)
                rendered, drawn = rendered[keep], drawn[keep]
            del maps
            tokens.append(drawn)
            groups.append(torch.full((rendered.shape[0],), g, dtype=torch.long, device=self.device))
            started = self._tick(seconds, "check", started)
            rendered = augment(rendered, cfg.augment, augment_rng)
            started = self._tick(seconds, "augment", started)
            if self.encode is not None:
                encoded += [self.encode(rendered[i:i + self.encode_batch])
                            for i in range(0, rendered.shape[0], self.encode_batch)]
                started = self._tick(seconds, "encode", started)
            else:
                images.append(rendered)
        group = torch.cat(groups)
        slots = max(s.structure.num_slots for s in structures)
        padded = torch.cat([torch.nn.functional.pad(t, (0, slots - t.shape[1])) for t in tokens])
        policy = collate([s.structure for s in structures]).to(self.device).select(group).with_tokens(padded)
        keys = [structures[g].key for g in group.tolist()]
        return OnlineBatch(policy, torch.cat(images) if images else None, torch.cat(encoded) if encoded else None,
                           keys, n * len(structures), seconds)

    def batch(self, step: int) -> OnlineBatch:
        """The training batch of `step` on this rank: part step % chunk_steps of chunk step // chunk_steps."""
        chunk, part = divmod(step, self.chunk_steps)
        seconds: dict[str, float] = {}
        if self._chunk is None or self._chunk[0] != chunk:
            self._chunk = None  # free the previous chunk first
            started = time.perf_counter()
            structures = self._structures(chunk)
            started = self._tick(seconds, "structures", started)
            with torch.no_grad():
                made = self._make(structures, self.samples_per_structure,
                                  self._generators(_TRAINING, self.rank, chunk), seconds, started)
            order = torch.randperm(made.size, generator=torch.Generator().manual_seed(
                step_seed(self.seed, _TRAINING, self.rank, chunk, _SHUFFLE)))
            self._chunk = (chunk, made, list(torch.tensor_split(order, self.chunk_steps)))
        _, made, parts = self._chunk
        out = made.select(parts[part], made.drawn * len(parts[part]) / max(made.size, 1))
        out.seconds = seconds
        return out

    def validation_batches(self) -> list[OnlineBatch]:
        """This rank's share of the fixed held-out set (every held-out structure with
        `val_samples_per_structure` samples; the same on every run and rank count)."""
        out = []
        n = self.config.val_samples_per_structure
        for index in range(self.rank, len(self.pool.held_out), self.world_size):
            structure = self.pool.held_out[index]
            with torch.no_grad():
                batch = self._make([structure], n, self._generators(_VALIDATION, index, 0), {}, time.perf_counter())
            if batch.size:
                out.append(batch)
        return out

    def close(self) -> None:
        if self._executor is not None:
            for future in self._ahead.values():
                future.cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class BatchPrefetcher:
    """Makes the stream's batches `chunks` chunks ahead in a background thread, so that data generation
    overlaps the training steps instead of adding to them.

    On CUDA the thread works on its own stream; a batch is handed over with an event the consuming
    stream waits on, and its tensors are recorded on the consuming stream so the caching allocator
    does not reuse their memory early. Batches are the same as `stream.batch(step)` (a pure function
    of the step), so prefetching changes timing, never results. An exception in the thread is raised
    by `next()`.
    """

    def __init__(self, stream: OnlineSyntheticStream, start: int, stop: int, chunks: int = 1):
        self.stream = stream
        self.device = stream.device
        # a chunk's batches are cheap slices: queue them all, so the next chunk is made while they train
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, chunks) * stream.chunk_steps)
        self._stop = threading.Event()
        self._side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._thread = threading.Thread(target=self._run, args=(start, stop), name="online-batches", daemon=True)
        self._thread.start()

    def _run(self, start: int, stop: int) -> None:
        try:
            for step in range(start, stop):
                if self._stop.is_set():
                    return
                if self._side is not None:
                    with torch.cuda.stream(self._side):
                        batch = self.stream.batch(step)
                        event = torch.cuda.Event()
                        event.record(self._side)
                else:
                    batch, event = self.stream.batch(step), None
                while not self._stop.is_set():
                    try:
                        self._queue.put((step, batch, event), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the consumer
            self._queue.put((None, err, None))

    def next(self, step: int) -> OnlineBatch:
        """The batch of `step` (steps must be asked for in order)."""
        got, batch, event = self._queue.get()
        if got is None:
            raise batch
        if got != step:
            raise RuntimeError(f"prefetched batch of step {got} handed out for step {step}")
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in _tensors_of(batch):
                tensor.record_stream(current)
        return batch

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


def _tensors_of(batch: OnlineBatch) -> Iterator[torch.Tensor]:
    for value in vars(batch.policy).values():
        if isinstance(value, torch.Tensor):
            yield value
    for value in (batch.images, batch.image_tokens):
        if isinstance(value, torch.Tensor):
            yield value
