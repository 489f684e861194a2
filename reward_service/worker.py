"""RewardWorker: execute a batch of parameter sets of one graph, render it and score it against a target.

A plain class (the Ray actor and the gRPC server are thin shells around it). Request-level problems
(undecodable target, unknown target key, inconsistent lengths) raise RequestError; anything that goes
wrong with a sample — invalid or NaN parameter, executor exception, non-finite maps or render, timeout,
an unparsable graph — gives that sample `failure_reward`, ok=False and a reason naming the culprit.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from graph_executor.errors import GraphError
from graph_executor.executor import Plan
from graph_executor.ir import Graph, loads_graph
from graph_executor.render import render_flash
from reward_service.allocator import retain_freed_memory
from reward_service.api import LIBRARY_PREFIX, RequestError, ScoreRequest, ScoreResult, TargetImage
from reward_service.config import RewardConfig
from reward_service.images import ImageError, decode_image
from reward_service.metrics import AppearanceMetric, Descriptor

@dataclass
class _Compiled:
    graph: Graph
    plan: Plan
    tokenizer: Any = None


class _LRU(OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.hits = 0
        self.misses = 0

    def lookup(self, key):
        if key in self:
            self.move_to_end(key)
            self.hits += 1
            return self[key]
        self.misses += 1
        return None

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class TargetStore:
    """Descriptors of the targets put under keys, least recently used first, bounded in bytes.

    What a key costs is its Descriptor (Gram matrices and pooled L*a*b*), not its pixels: about
    0.47 MB with EfficientNet-Lite0 and 2.4 MB with VGG19, whatever the image's size (a 4096²
    image decoded to float32 would be 201 MB). When `capacity_bytes` would be exceeded the least
    recently used keys are evicted; the pool puts an evicted key back when a request needs it.
    """

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.entries: OrderedDict[str, tuple[Descriptor, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Descriptor | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, descriptor: Descriptor) -> None:
        size = sum(t.untyped_storage().nbytes() for t in [*descriptor.grams, descriptor.lab])
        if size > self.capacity_bytes:
            raise RequestError(f"target {key!r}: its descriptor takes {size} bytes, more than the whole "
                               f"target store (target_store_bytes {self.capacity_bytes})")
        self.pop(key)
        while self.entries and self.nbytes + size > self.capacity_bytes:
            self.pop(next(iter(self.entries)))
            self.evictions += 1
        self.entries[key] = (descriptor, size)
        self.nbytes += size

    def pop(self, key: str) -> bool:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry[1]
        return entry is not None


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class RewardWorker:
    """Scores batches of samples of one graph against one target; caches compiled plans and target features."""

    def __init__(self, config: RewardConfig = RewardConfig(), metric: AppearanceMetric | None = None):
        self.config = config
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.retains_freed_memory = config.retain_freed_memory and retain_freed_memory()
        self.device = torch.device(config.device)
        self.metric = metric or AppearanceMetric(config.metric)
        self.metric.backbone.to(self.device)
        self.metric.stage_scales = self.metric.stage_scales.to(self.device)
        self.metric.lab_weights = self.metric.lab_weights.to(self.device)
        self.plans = _LRU(config.plan_cache_size)
        self.targets = _LRU(config.target_cache_size)
        self.target_store = TargetStore(config.target_store_bytes)
        self.counters = {"requests": 0, "samples": 0, "failures": 0, "timeouts": 0, "cancelled": 0}

    # ---- targets -------------------------------------------------------------------------------
    def put_target(self, key: str, image: np.ndarray | torch.Tensor | bytes) -> None:
        """Keep a target's descriptor under `key`, so requests can name it instead of shipping pixels
        (bounded: `TargetStore`). A bad image raises RequestError and leaves the key as it was."""
        descriptor = self.metric.describe(self._decode_target(image).to(self.device))
        self.target_store.put(key, descriptor)

    def drop_target(self, key: str) -> bool:
        return self.target_store.pop(key)

    def _decode_target(self, image: Any) -> torch.Tensor:
        cfg = self.config
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            if len(data) > cfg.max_target_bytes:
                raise RequestError(f"target: {len(data)} bytes exceeds max_target_bytes {cfg.max_target_bytes}")
            try:
                array = decode_image(data, cfg.max_target_side)
            except ImageError as err:
                raise RequestError(f"target: {err}") from None
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        else:
            raise RequestError(f"target: expected an image array, encoded bytes or a store key, "
                               f"got {type(image).__name__}")
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise RequestError(f"target: expected HxWx3 (or HxW, HxWx1, HxWx4), got shape {tuple(array.shape)}")
        if array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        array = array[:, :, :3]
        h, w = array.shape[:2]
        if min(h, w) < cfg.min_target_side or max(h, w) > cfg.max_target_side:
            raise RequestError(f"target: {w}x{h} outside the accepted sides "
                               f"[{cfg.min_target_side}, {cfg.max_target_side}]")
        if array.dtype == np.uint8:
            pixels = torch.from_numpy(array.astype(np.float32)).div_(255.0)  # one float copy, not two
        elif np.issubdtype(array.dtype, np.floating):
            pixels = torch.from_numpy(np.array(array, dtype=np.float32))
            if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
                raise RequestError("target: float images must be finite and in [0,1]")
        else:
            raise RequestError(f"target: unsupported dtype {array.dtype}; use uint8 or float in [0,1]")
        if cfg.reject_blank_targets and float(pixels.max() - pixels.min()) <= 1.0 / 255:
            raise RequestError("target: blank image (all pixels equal); a failed capture cannot be matched")
        return pixels.permute(2, 0, 1).unsqueeze(0)

    def _target_descriptor(self, target: TargetImage) -> Descriptor:
        if isinstance(target, str):
            stored = self.target_store.get(target)
            if stored is None:
                raise RequestError(f"target: unknown target key {target!r}")
            return stored
        if isinstance(target, (bytes, bytearray, memoryview)):
            key = "bytes:" + hashlib.sha1(bytes(target)).hexdigest()
        elif isinstance(target, (np.ndarray, torch.Tensor)):
            arr = np.ascontiguousarray(target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else target)
            key = f"array:{arr.dtype}:{arr.shape}:" + hashlib.sha1(arr.tobytes()).hexdigest()
        else:
            raise RequestError(f"target: expected an image array, encoded bytes or a store key, "
                               f"got {type(target).__name__}")
        cached = self.targets.lookup(key)
        if cached is None:
            cached = self.metric.describe(self._decode_target(target).to(self.device))
            self.targets.put(key, cached)
        return cached

    # ---- structures ------------------------------------------------------------------------------
    def _compiled(self, structure: str) -> _Compiled:
        key = hashlib.sha1(structure.encode()).hexdigest()
        cached = self.plans.lookup(key)
        if cached is None:
            if structure.startswith(LIBRARY_PREFIX):
                from graph_executor.library import load_library_graph
                graph = load_library_graph(structure[len(LIBRARY_PREFIX):])
            else:
                graph = loads_graph(structure)
            cached = _Compiled(graph, Plan(graph))
            self.plans.put(key, cached)
        return cached

    def _decode_tokens(self, compiled: _Compiled, tokens: list[int]) -> dict:
        if compiled.tokenizer is None:
            from policy.tokenizer import GraphTokenizer
            compiled.tokenizer = GraphTokenizer(compiled.graph)
        return compiled.tokenizer.detokenize(tokens)

    # ---- scoring ---------------------------------------------------------------------------------
    def score(self, request: ScoreRequest, cancelled: Callable[[], bool] | None = None) -> list[ScoreResult]:
        """One result per sample, in order. Raises RequestError only for a malformed request.

        `cancelled` (optional) is asked between micro-batches, like the timeout: once it answers
        True the remaining samples fail with a `cancelled:` reason (the caller gave up on them).
        """
        start = time.perf_counter()
        timeout = request.timeout_s if request.timeout_s is not None else self.config.default_timeout_s
        deadline = start + timeout
        stopped = ""

        def expired() -> bool:
            nonlocal stopped
            if not stopped and cancelled is not None and cancelled():
                stopped = "cancelled: the caller gave up on the request"
            elif not stopped and time.perf_counter() > deadline:
                stopped = f"timeout: request exceeded {timeout:g}s"
            return bool(stopped)
        n = len(request.seeds)
        if (request.param_sets is None) == (request.tokens is None):
            raise RequestError("give exactly one of param_sets and tokens")
        samples = request.param_sets if request.param_sets is not None else request.tokens
        if len(samples) != n:
            raise RequestError(f"{len(samples)} samples but {n} seeds")
        if not isinstance(request.structure, str):
            raise RequestError(f"structure: expected JSON text or 'lib:<name>', got {type(request.structure).__name__}")
        target = self._target_descriptor(request.target)
        self.counters["requests"] += 1
        self.counters["samples"] += n
        results: list[ScoreResult | None] = [None] * n
        timings = {"prepare": 0.0, "execute": 0.0, "render": 0.0, "reward": 0.0}

        def fail(i: int, reason: str) -> None:
            results[i] = ScoreResult(self.config.failure_reward, {}, False, reason)

        try:
            compiled = self._compiled(request.structure)
        except Exception as err:  # an unparsable/unknown structure fails every sample, never the worker
            for i in range(n):
                fail(i, f"structure: {_short(err)}")
            return self._finish(results, timings, start, n)

        overrides: dict[int, dict] = {}
        for i, sample in enumerate(samples):
            try:
                ps = sample if request.param_sets is not None else self._decode_tokens(compiled, sample)
                compiled.plan.stack([ps])  # validates every value; names node and parameter
                overrides[i] = ps
            except Exception as err:
                fail(i, _short(err))
        timings["prepare"] = time.perf_counter() - start

        good = list(overrides)
        images: dict[int, torch.Tensor] = {}
        for lo in range(0, len(good), self.config.samples_per_call):
            if expired():
                break
            chunk = good[lo:lo + self.config.samples_per_call]
            images.update(self._render_chunk(compiled.plan, chunk, overrides, request.seeds, fail, timings))

        for i in good:
            if i not in images and results[i] is None:
                fail(i, f"{stopped} before this sample was executed")
                self.counters["cancelled" if stopped.startswith("cancelled") else "timeouts"] += 1

        t = time.perf_counter()
        done = [i for i in good if i in images]
        for lo in range(0, len(done), self.config.samples_per_call):
            chunk = done[lo:lo + self.config.samples_per_call]
            if expired():
                for i in chunk:
                    fail(i, f"{stopped} before this sample's reward was computed")
                self.counters["cancelled" if stopped.startswith("cancelled") else "timeouts"] += len(chunk)
                continue
            try:
                pred = self.metric.describe(torch.cat([images[i] for i in chunk]))
                terms = self.metric.terms(pred, target)
                rewards = self.metric.reward(terms)
            except Exception as err:
                for i in chunk:
                    fail(i, f"reward: {_short(err)}")
                continue
            for j, i in enumerate(chunk):
                value = float(rewards[j])
                sample_terms = {k: float(v[j]) for k, v in terms.items()}
                if not np.isfinite(value):
                    fail(i, f"reward: non-finite reward {value} (terms {sample_terms})")
                else:
                    results[i] = ScoreResult(value, sample_terms)
        timings["reward"] = time.perf_counter() - t
        return self._finish(results, timings, start, n)

    def score_many(self, requests: list[ScoreRequest], timeout_s: float | None = None) -> list[list[ScoreResult]]:
        """Several requests one after the other (the in-process twin of `RewardClient.score_many`)."""
        import dataclasses

        if timeout_s is not None:
            requests = [dataclasses.replace(r, timeout_s=timeout_s) if r.timeout_s is None else r for r in requests]
        return [self.score(r) for r in requests]

    def _render_chunk(self, plan: Plan, chunk: list[int], overrides: Mapping[int, dict], seeds: list[int],
                      fail, timings: dict) -> dict[int, torch.Tensor]:
        """Execute and render a chunk as one batch; on an exception, retry its samples one by one
        so that only the culprit fails."""
        try:
            return self._execute(plan, chunk, overrides, seeds, fail, timings)
        except Exception as err:
            if len(chunk) == 1:
                fail(chunk[0], f"executor: {_short(err)}")
                return {}
        out: dict[int, torch.Tensor] = {}
        for i in chunk:
            out.update(self._render_chunk(plan, [i], overrides, seeds, fail, timings))
        return out

    def _execute(self, plan: Plan, chunk: list[int], overrides: Mapping[int, dict], seeds: list[int],
                 fail, timings: dict) -> dict[int, torch.Tensor]:
        t = time.perf_counter()
        params = plan.stack([overrides[i] for i in chunk], device=self.device)
        maps = plan.run(params, res=self.config.res, seed=[int(seeds[i]) for i in chunk], device=self.device)
        t2 = time.perf_counter()
        rendered = render_flash(maps)
        timings["execute"] += t2 - t
        timings["render"] += time.perf_counter() - t2
        maps_ok = maps.finite_per_sample()
        render_ok = torch.isfinite(rendered).flatten(1).all(1)
        out = {}
        for j, i in enumerate(chunk):
            if not bool(maps_ok[j]):
                bad = [name for name, m in maps.items() if not bool(torch.isfinite(m[j]).all())]
                fail(i, f"executor: non-finite values in output maps {bad}")
            elif not bool(render_ok[j]):
                fail(i, "render: non-finite pixels")
            else:
                out[i] = rendered[j:j + 1]
        return out

    def _finish(self, results: list[ScoreResult | None], timings: dict, start: float, n: int) -> list[ScoreResult]:
        total = time.perf_counter() - start
        per_sample = {k: v / max(n, 1) for k, v in timings.items()}
        per_sample["total"] = total / max(n, 1)
        per_sample["request_total"] = total
        out = []
        for r in results:
            r.timings = dict(per_sample)
            if not r.ok:
                self.counters["failures"] += 1
            out.append(r)
        return out

    def stats(self) -> dict[str, int]:
        """Counters and cache statistics, for metrics export."""
        return {**self.counters, "plan_cache_hits": self.plans.hits, "plan_cache_misses": self.plans.misses,
                "target_cache_hits": self.targets.hits, "target_cache_misses": self.targets.misses,
                "target_store_keys": len(self.target_store), "target_store_bytes": self.target_store.nbytes,
                "target_store_evictions": self.target_store.evictions}
