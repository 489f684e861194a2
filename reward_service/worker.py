"""RewardWorker: execute a batch of parameter sets of one graph, render it and score it against a target.

A plain class (the Ray actor and the gRPC server are thin shells around it). Request-level problems
(undecodable target, unknown target key, inconsistent lengths) raise RequestError; anything that goes
wrong with a sample — invalid or NaN parameter, executor exception, non-finite maps or render, timeout,
an unparsable graph — gives that sample `failure_reward`, ok=False and a reason naming the culprit.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from graph_executor.compiled import compiled as compiled_fn
from graph_executor.errors import GraphError
from graph_executor.executor import MaterialMaps, ParamTensors, Plan
from graph_executor.ir import Graph, loads_graph
from graph_executor.render import render_flash
from reward_service.allocator import retain_freed_memory
from reward_service.api import LIBRARY_PREFIX, RequestError, ScoreRequest, ScoreResult, TargetImage
from reward_service.config import RewardConfig
from reward_service.images import ImageError, decode_image
from reward_service.metrics import AppearanceMetric, Descriptor
from reward_service.timing import PHASES, PhaseTimer

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
        self.autocast = torch.bfloat16 if config.cnn_autocast == "bfloat16" else None
        if self.device.type == "cuda":  # process-wide, like torch_threads: a worker owns its process
            torch.backends.cudnn.allow_tf32 = config.tf32
        self.plans = _LRU(config.plan_cache_size)
        self.targets = _LRU(config.target_cache_size)
        self.target_store = TargetStore(config.target_store_bytes)
        self.counters = {"requests": 0, "samples": 0, "failures": 0, "timeouts": 0, "cancelled": 0}

    # ---- targets -------------------------------------------------------------------------------
    def put_target(self, key: str, image: np.ndarray | torch.Tensor | bytes) -> None:
        """Keep a target's descriptor under `key`, so requests can name it instead of shipping pixels
        (bounded: `TargetStore`). A bad image raises RequestError and leaves the key as it was."""
        descriptor = self.metric.describe(self._decode_target(image).to(self.device), autocast=self.autocast)
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
            cached = self.metric.describe(self._decode_target(target).to(self.device), autocast=self.autocast)
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

    # ---- scoring ---------------------------------------------------------------------------------
    def score(self, request: ScoreRequest, cancelled: Callable[[], bool] | None = None) -> list[ScoreResult]:
        """One result per sample, in order. Raises RequestError only for a malformed request.

        `cancelled` (optional) is asked between micro-batches, like the timeout: once it answers
        True the remaining samples fail with a `cancelled:` reason (the caller gave up on them).

        The whole request is decoded and validated at once (`_prepare`), moved to the device in
        one copy, then executed, rendered and scored in calls of `samples_per_call` samples, each
        ending in one device-to-host transfer of its rewards, terms and finiteness flags.
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
        timer = PhaseTimer(self.device)

        def fail(i: int, reason: str) -> None:
            results[i] = ScoreResult(self.config.failure_reward, {}, False, reason)

        def stop(rows: list[int], stage: str) -> None:
            for i in rows:
                if results[i] is None:
                    fail(i, f"{stopped} before this sample{stage}")
                    self.counters["cancelled" if stopped.startswith("cancelled") else "timeouts"] += 1

        try:
            compiled = self._compiled(request.structure)
        except Exception as err:  # an unparsable/unknown structure fails every sample, never the worker
            for i in range(n):
                fail(i, f"structure: {_short(err)}")
            return self._finish(results, timer, start, n)

        good, params = self._prepare(compiled, request, fail, timer)
        seeds = torch.tensor([int(request.seeds[i]) for i in good], dtype=torch.long)
        if good and self.device.type != "cpu":
            params, seeds = _to_device(params, self.device), seeds.to(self.device)
        timer.lap("validate")

        step = self.config.samples_per_call
        for lo in range(0, len(good), step):
            rows = good[lo:lo + step]
            if expired():
                stop(good[lo:], " was executed")
                break
            chunk = {node: {k: v[lo:lo + step] for k, v in ps.items()} for node, ps in params.items()}
            for i, result in self._score_chunk(compiled.plan, rows, chunk, seeds[lo:lo + step], target,
                                               expired, timer).items():
                results[i] = result
            stop(rows, "'s reward was computed")  # rows the deadline caught between execution and reward
        return self._finish(results, timer, start, n)

    def score_many(self, requests: list[ScoreRequest], timeout_s: float | None = None) -> list[list[ScoreResult]]:
        """Several requests one after the other (the in-process twin of `RewardClient.score_many`)."""
        import dataclasses

        if timeout_s is not None:
            requests = [dataclasses.replace(r, timeout_s=timeout_s) if r.timeout_s is None else r for r in requests]
        return [self.score(r) for r in requests]

    # ---- decoding and validation -----------------------------------------------------------------
    def _prepare(self, compiled: _Compiled, request: ScoreRequest, fail, timer: "PhaseTimer"
                 ) -> tuple[list[int], ParamTensors]:
        """The samples that decode and validate, and their parameter tensors (rows in that order).

        Batched (default): token rows that form an integer matrix of the graph's slot count are
        screened for invalid tokens in one comparison and dequantised column by column straight into
        tensors (`GraphTokenizer.param_columns`, `Plan.stack_columns`); parameter sets are stacked in
        one `Plan.stack`. Only culprits (and rows of odd shape or type) go through the per-sample
        reference `_prepare_per_sample`, which gives every failure its reason.
        """
        if not self.config.batched_validation:
            return self._prepare_per_sample(compiled, request, range(len(request.seeds)), fail, timer)
        plan = compiled.plan
        if request.param_sets is not None:
            try:
                params = plan.stack(request.param_sets)
            except Exception:  # noqa: BLE001 — some sample is bad: find it (and its reason) sample by sample
                return self._prepare_per_sample(compiled, request, range(len(request.seeds)), fail, timer)
            timer.lap("validate")
            return list(range(len(request.seeds))), params
        tokenizer = self._tokenizer(compiled)
        array, matrix_rows, odd_rows = _token_matrix(request.tokens, len(tokenizer))
        invalid = tokenizer.invalid_rows(array)
        fast = [i for i, bad in zip(matrix_rows, invalid.tolist()) if not bad]
        slow = sorted(odd_rows + [i for i, bad in zip(matrix_rows, invalid.tolist()) if bad])
        columns = tokenizer.param_columns(array[~invalid])
        timer.lap("decode")
        params = plan.stack_columns(columns, len(fast))
        timer.lap("validate")
        if not slow:
            return fast, params
        # Rows the fast path cannot take: the reference path names each one's failure; a row it
        # accepts (e.g. tokens given as floats) is stacked with the others.
        rescued, rescued_params = self._prepare_per_sample(compiled, request, slow, fail, timer)
        if not rescued:
            return fast, params
        if not fast:
            return rescued, rescued_params
        good = sorted(fast + rescued)
        merged = {node: {k: torch.cat([params[node][k], rescued_params[node][k]]) for k in ps}
                  for node, ps in params.items()}
        position = {i: p for p, i in enumerate(fast + rescued)}
        order = torch.tensor([position[i] for i in good], dtype=torch.long)
        return good, {node: {k: v.index_select(0, order) for k, v in ps.items()} for node, ps in merged.items()}

    def _prepare_per_sample(self, compiled: _Compiled, request: ScoreRequest, indices, fail,
                            timer: "PhaseTimer") -> tuple[list[int], ParamTensors]:
        """The reference: decode and validate each sample alone (`plan.stack([sample])` names the
        node and parameter of a bad value), then stack the good ones."""
        overrides: list[dict] = []
        good: list[int] = []
        decode_s = 0.0
        for i in indices:
            try:
                if request.param_sets is not None:
                    ps = request.param_sets[i]
                else:
                    t = time.perf_counter()
                    ps = self._tokenizer(compiled).detokenize(request.tokens[i])
                    decode_s += time.perf_counter() - t
                compiled.plan.stack([ps])  # validates every value; names node and parameter
                overrides.append(ps)
                good.append(i)
            except Exception as err:
                fail(i, _short(err))
        params = compiled.plan.stack(overrides) if overrides else compiled.plan.stack([])
        timer.lap("validate", carve={"decode": decode_s})
        return good, params

    def _tokenizer(self, compiled: _Compiled):
        if compiled.tokenizer is None:
            from policy.tokenizer import GraphTokenizer
            compiled.tokenizer = GraphTokenizer(compiled.graph)
        return compiled.tokenizer

    # ---- execution and reward --------------------------------------------------------------------
    def _score_chunk(self, plan: Plan, rows: list[int], params: ParamTensors, seeds: torch.Tensor,
                     target: Descriptor, expired: Callable[[], bool], timer: "PhaseTimer") -> dict[int, ScoreResult]:
        """Execute, render and score one call's samples. A sample with non-finite maps or pixels,
        an executor exception (the call is then retried sample by sample so only the culprit fails)
        or a non-finite reward gets its failure; rows absent from the answer were stopped by the
        deadline or a cancellation after execution."""
        out: dict[int, ScoreResult] = {}
        try:
            maps, images = self._execute(plan, params, seeds, timer)
        except Exception as err:  # noqa: BLE001 — find the culprit
            if len(rows) == 1:
                out[rows[0]] = self._failure(f"executor: {_short(err)}")
                return out
            for j, i in enumerate(rows):
                one = {node: {k: v[j:j + 1] for k, v in ps.items()} for node, ps in params.items()}
                out.update(self._score_chunk(plan, [i], one, seeds[j:j + 1], target, expired, timer))
            return out
        finite = [maps.finite_per_sample(), torch.isfinite(images).flatten(1).all(1)]
        if expired():
            maps_ok, render_ok = torch.stack(finite).tolist()
            self._finite_failures(rows, maps, maps_ok, render_ok, out)
            return out
        try:
            pred = self.metric.describe(images, autocast=self.autocast)
            timer.lap("cnn")
            terms = self.metric.terms(pred, target)
            rewards = self.metric.reward(terms)
            table = torch.stack([*finite, rewards, *terms.values()]).tolist()  # the call's one transfer
        except Exception as err:  # noqa: BLE001
            maps_ok, render_ok = torch.stack(finite).tolist()
            self._finite_failures(rows, maps, maps_ok, render_ok, out)
            for i in rows:
                out.setdefault(i, self._failure(f"reward: {_short(err)}"))
            return out
        maps_ok, render_ok, values, *columns = table
        self._finite_failures(rows, maps, maps_ok, render_ok, out)
        names = list(terms)
        for j, i in enumerate(rows):
            if i in out:
                continue
            sample_terms = {name: column[j] for name, column in zip(names, columns)}
            if not math.isfinite(values[j]):
                out[i] = self._failure(f"reward: non-finite reward {values[j]} (terms {sample_terms})")
            else:
                out[i] = ScoreResult(values[j], sample_terms)
        timer.lap("terms")
        return out

    def _execute(self, plan: Plan, params: ParamTensors, seeds: torch.Tensor, timer: "PhaseTimer"):
        """Maps and sRGB renders of a call (compiled: padded to a power-of-two batch, so that the
        compiled kernels see few batch sizes; padding repeats the last sample and is cut off)."""
        batch = int(seeds.shape[0])
        if self.config.compile:
            padded = min(_next_power_of_two(batch), max(self.config.samples_per_call, batch))
            params, seeds = _pad_rows(params, padded), _pad_rows(seeds, padded)
        maps = plan.run(params, res=self.config.res, seed=seeds, device=self.device, compile=self.config.compile)
        timer.lap("execute")
        images = (compiled_fn(render_flash) if self.config.compile else render_flash)(maps)
        if self.config.compile and int(images.shape[0]) != batch:
            maps = MaterialMaps(**{name: m[:batch] for name, m in maps.items()})
            images = images[:batch]
        timer.lap("render")
        return maps, images

    def _finite_failures(self, rows: list[int], maps: MaterialMaps, maps_ok: list, render_ok: list,
                         out: dict[int, ScoreResult]) -> None:
        for j, i in enumerate(rows):
            if not maps_ok[j]:
                bad = [name for name, m in maps.items() if not bool(torch.isfinite(m[j]).all())]
                out[i] = self._failure(f"executor: non-finite values in output maps {bad}")
            elif not render_ok[j]:
                out[i] = self._failure("render: non-finite pixels")

    def _failure(self, reason: str) -> ScoreResult:
        return ScoreResult(self.config.failure_reward, {}, False, reason)

    def _finish(self, results: list[ScoreResult | None], timer: "PhaseTimer", start: float, n: int
                ) -> list[ScoreResult]:
        seconds = timer.seconds()
        total = time.perf_counter() - start
        per_sample = {k: seconds.get(k, 0.0) / max(n, 1) for k in PHASES}
        per_sample["prepare"] = per_sample["decode"] + per_sample["validate"]
        per_sample["reward"] = per_sample["cnn"] + per_sample["terms"]
        per_sample["total"] = total / max(n, 1)
        per_sample["request_total"] = total
        out = []
        for r in results:  # one read-only dict shared by the rows: a 4,096-row answer pickles 3x smaller
            r.timings = per_sample
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


def _token_matrix(tokens, slots: int) -> tuple[np.ndarray, list[int], list[int]]:
    """(matrix, its rows' sample indices, other indices): the samples whose tokens form an integer
    row of `slots` values, stacked; the others (wrong length, non-integer values) go to the
    per-sample reference path, which names their fault."""
    if isinstance(tokens, np.ndarray) and tokens.ndim == 2 and tokens.shape[1] == slots \
            and np.issubdtype(tokens.dtype, np.integer):
        return tokens.astype(np.int64, copy=False), list(range(len(tokens))), []
    rows, fast, odd = [], [], []
    for i, row in enumerate(tokens):
        try:
            array = np.asarray(row)
        except Exception:  # noqa: BLE001 — ragged or odd objects: the reference path says what is wrong
            odd.append(i)
            continue
        if array.shape == (slots,) and np.issubdtype(array.dtype, np.integer):
            rows.append(array)
            fast.append(i)
        else:
            odd.append(i)
    matrix = np.stack(rows).astype(np.int64, copy=False) if rows else np.zeros((0, slots), np.int64)
    return matrix, fast, odd


def _to_device(params: ParamTensors, device: torch.device) -> ParamTensors:
    """All parameter tensors of a request in one host-to-device copy per dtype (not one per
    parameter: ~100 copies per call for a 30-node graph), split into contiguous tensors there."""
    by_dtype: dict[torch.dtype, list[tuple[str, str, torch.Tensor]]] = {}
    for node, ps in params.items():
        for name, t in ps.items():
            by_dtype.setdefault(t.dtype, []).append((node, name, t))
    out: ParamTensors = {node: {} for node in params}
    for dtype, items in by_dtype.items():
        flat = [t.reshape(t.shape[0], -1).T for _, _, t in items]  # (components, B) each
        packed = torch.cat(flat).to(device)
        row = 0
        for (node, name, t), part in zip(items, flat):
            width = part.shape[0]
            out[node][name] = packed[row:row + width].T.reshape(t.shape).contiguous()
            row += width
    return out


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _pad_rows(value, rows: int):
    """Tensors (or nested dicts of tensors) padded along the batch axis to `rows` by repeating the last row."""
    if isinstance(value, dict):
        return {k: _pad_rows(v, rows) for k, v in value.items()}
    extra = rows - int(value.shape[0])
    if extra <= 0:
        return value
    return torch.cat([value, value[-1:].expand(extra, *value.shape[1:])])
