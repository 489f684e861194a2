"""A pool of reward-worker Ray actors: least-in-flight dispatch, re-dispatch when a worker dies,
restart or replacement of dead workers, resizing while requests are being served, and the
registry of targets put under keys.

`RewardWorkerShell` is the actor body (a thin shell around `RewardWorker`); `RewardPool` is an
asyncio object living in the gRPC server's event loop, so its bookkeeping needs no locks.

A caller that gives up (deadline, cancellation, disconnect) costs the pool nothing beyond the work
already started: the pool never `ray.cancel`s a task it sent to an actor. Ray numbers the tasks a
caller sends to one actor and the actor runs them in that order; a task cancelled before it reached
the actor leaves a hole in the numbering, and the actor then waits 30 s for it before it fails every
queued task ("Timed out waiting for seq_no ... Cancelling all queued tasks"), which froze a worker
and got a live worker counted as dead. Instead the pool tells the worker, through the actor's
`control` concurrency group (a second thread that answers while a task runs), to skip the task or
to stop it at its next micro-batch, and keeps the task's in-flight slot until the worker is done
with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.exceptions import ActorUnavailableError, RayActorError

from reward_service.config import RewardConfig
from reward_service.api import RequestError, ScoreRequest, ScoreResult
from reward_service.worker import RewardWorker

log = logging.getLogger(__name__)


class PoolConfig(BaseModel):
    """How many reward workers, what each reserves, and how hard the pool tries to keep them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(2, ge=0)
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker actor")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per worker "
                                        "actor (e.g. {reward_worker: 1} to land on cluster.yaml's reward nodes)")
    max_restarts: int = Field(3, ge=-1, description="Ray restarts of one actor before the pool replaces it")
    max_attempts: int = Field(3, ge=1, description="dispatches of one task: the first plus re-dispatches "
                                                   "after the worker running it died")
    ready_timeout_s: float = Field(600.0, gt=0, description="wait for a worker to start or come back")
    max_in_flight: int = Field(2, ge=1, description="tasks sent to one worker at a time (one running, the "
                                                    "rest queued there); more wait in the pool, where a "
                                                    "deadline or cancellation drops them before any work")
    min_workers: int = Field(1, ge=0, description="smallest size a resize may ask for (0 lets an admin empty "
                                                  "the pool)")
    max_workers: int = Field(256, ge=1, description="largest size a resize may ask for; resizes are also "
                                                    "bounded by the cluster's CPUs / num_cpus")
    max_target_store_bytes: int = Field(1 << 30, ge=1, description="encoded bytes of the targets put under "
                                        "keys that the pool keeps (to give them to new or restarted "
                                        "workers); least recently used keys are dropped beyond it")
    gpu_workers: int = Field(0, ge=0, description="GPU reward workers beside the CPU ones (a fixed count; "
                                                  "resizes change the CPU workers)")
    num_gpus_per_worker: float = Field(0.25, gt=0, le=1, description="GPU share Ray reserves per GPU worker "
                                       "(fractions put several workers on one GPU)")
    gpu_resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per GPU "
                                            "worker (e.g. a GPU node type's)")
    gpu_device: str = Field("cuda", description="device of the GPU workers' RewardConfig; 'cpu' runs the "
                            "big-task worker kind without a GPU (and without reserving one): tests, dispatch "
                            "measurements")
    gpu_task_samples: int = Field(4096, ge=1, description="rows per task sent to a GPU worker; a CPU worker "
                                  "takes the server's chunk_samples")
    gpu_overrides: dict[str, Any] = Field(default_factory=dict, description="RewardConfig fields that differ on "
                                          "GPU workers (e.g. {compile: true, cnn_autocast: bfloat16})")
    gpu_max_in_flight: int = Field(8, ge=1, description="tasks queued on one GPU worker at a time: in a mixed "
                                   "pool small tasks wait for a GPU worker that would finish them sooner than an "
                                   "idle CPU worker (see RewardPool._pick)")

    @model_validator(mode="after")
    def _check(self) -> "PoolConfig":
        if not self.min_workers <= self.workers <= self.max_workers:
            raise ValueError(f"workers {self.workers} outside [min_workers {self.min_workers}, "
                             f"max_workers {self.max_workers}]")
        if "device" in self.gpu_overrides:
            raise ValueError("gpu_overrides: set the GPU workers' device with gpu_device")
        return self

    @property
    def gpu_uses_gpu(self) -> bool:
        return not self.gpu_device.startswith("cpu")


class MissingTarget(KeyError):
    """The worker does not hold this target key (it was restarted or started after PutTarget)."""


class UnknownTarget(LookupError):
    """No target was registered under this key."""


class PoolUnavailable(RuntimeError):
    """No worker could take the task (none configured, or none came back in time)."""


class WorkerCrashed(RuntimeError):
    """The task's workers died `max_attempts` times in a row while running it."""


class DeadlinePassed(TimeoutError):
    """The task reached its worker after the caller's deadline; it was not run."""


class TaskCancelled(RuntimeError):
    """The caller gave up on the task before it started; it was not run."""


class InvalidSize(ValueError):
    """A resize outside [min_workers, max_workers]."""


class InsufficientResources(RuntimeError):
    """A resize to more workers than the cluster's CPUs can hold."""


class RewardWorkerShell:
    """Ray actor body: one RewardWorker (torch threads = 1 by its config) in its own process.

    `score`, `put_target` and `drop_targets` run one at a time on the actor's default thread;
    `ready`, `cancel` and `stats` run in the `control` concurrency group, so they answer while a
    task runs (that is how a cancellation reaches a running or queued task).
    """

    CANCELLED_MEMORY = 4096  # task ids remembered as cancelled (a cancel may outlive its task)

    def __init__(self, config: RewardConfig):
        self.worker = RewardWorker(config)
        self.versions: dict[str, int] = {}  # key -> version of the image the worker holds
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self.skipped = {"skipped_cancelled": 0, "skipped_deadline": 0}  # tasks not run at all

    @ray.method(concurrency_group="control")
    def ready(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="control")
    def cancel(self, task_id: str) -> None:
        """The caller gave up on `task_id`: skip it if it has not started, else stop it at the next
        micro-batch (its remaining samples fail with a `cancelled:` reason nobody reads)."""
        self._cancelled[task_id] = None
        while len(self._cancelled) > self.CANCELLED_MEMORY:
            self._cancelled.popitem(last=False)

    def score(self, request: ScoreRequest, deadline_unix: float | None = None, task_id: str = "",
              target_version: int | None = None) -> list[ScoreResult]:
        """Score, given the caller's wall-clock deadline: time spent queued here counts against it.
        A store key must be held at `target_version` (else MissingTarget: the pool puts it again)."""
        if task_id in self._cancelled:
            del self._cancelled[task_id]
            self.skipped["skipped_cancelled"] += 1
            raise TaskCancelled(f"task {task_id} was cancelled before it started")
        if deadline_unix is not None:
            remaining = deadline_unix - time.time()
            if remaining <= 0:
                self.skipped["skipped_deadline"] += 1
                raise DeadlinePassed(f"deadline passed {-remaining:.3f}s before the task started")
            request = dataclasses.replace(request, timeout_s=remaining)
        if isinstance(request.target, str) and (request.target not in self.worker.target_store or
                                                self.versions.get(request.target) != target_version):
            raise MissingTarget(request.target)
        try:
            return self.worker.score(request, cancelled=(lambda: task_id in self._cancelled) if task_id else None)
        finally:
            self._cancelled.pop(task_id, None)

    def put_target(self, key: str, image: bytes, version: int) -> int:
        """Decode, describe and keep a target (RequestError for a bad image); returns keys held."""
        self.worker.put_target(key, image)
        self.versions[key] = version
        for gone in [k for k in self.versions if k not in self.worker.target_store]:  # evicted
            del self.versions[gone]
        return len(self.worker.target_store)

    def drop_targets(self, keys: list[str]) -> int:
        """Forget keys (deleted, or dropped from the pool's registry); returns how many were held."""
        held = sum(self.worker.drop_target(k) for k in keys)
        for key in keys:
            self.versions.pop(key, None)
        return held

    @ray.method(concurrency_group="control")
    def stats(self) -> dict[str, int]:
        return {**self.worker.stats(), **self.skipped, "pid": os.getpid()}


RewardWorkerActor = ray.remote(num_cpus=1, concurrency_groups={"control": 1})(RewardWorkerShell)


class SlotState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RECOVERING = "recovering"
    DRAINING = "draining"


@dataclass(eq=False)
class WorkerSlot:
    """One place in the pool; its actor may be restarted by Ray or replaced by the pool."""

    name: str
    actor: ray.actor.ActorHandle
    state: SlotState = SlotState.STARTING
    in_flight: int = 0
    dispatched: int = 0
    pid: int | None = None  # of the actor's process once ready: a restart changes it
    gpu: bool = False  # a GPU worker: takes `gpu_task_samples` rows per task, not counted by resizes
    rate: float = 0.0  # measured samples/s of this worker (moving average of its tasks; 0: none yet)
    task_samples: float = 0.0  # moving average of its tasks' sizes (what each task queued there holds)
    free_at: float = 0.0  # monotonic time its last task came back


class RewardPool:
    """K reward-worker actors behind one `score` coroutine. Start with `await pool.start()`."""

    def __init__(self, reward_config: RewardConfig = RewardConfig(), config: PoolConfig = PoolConfig()):
        self.reward_config = reward_config
        self.config = config
        self.gpu_reward_config = RewardConfig(**{**reward_config.model_dump(), **config.gpu_overrides,
                                                 "device": config.gpu_device})
        self.slots: list[WorkerSlot] = []
        self.size = 0
        self.targets: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # key -> (image, version), LRU first
        self.target_bytes = 0
        self.counters = {"tasks": 0, "retries": 0, "restarts": 0, "abandoned": 0}
        self._names = itertools.count()
        self._versions = itertools.count(1)
        self._task_ids = itertools.count()
        self._changed: asyncio.Event | None = None
        self._resizing: asyncio.Lock | None = None
        self._background: set[asyncio.Task] = set()

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> "RewardPool":
        await self.resize(self.config.workers)
        await self._start_gpu_workers(self.config.gpu_workers)
        return self

    async def _start_gpu_workers(self, count: int) -> None:
        """Start the GPU workers (their count is fixed; `resize` changes the CPU workers)."""
        if not count:
            return
        self._bind_loop()
        fresh = [WorkerSlot(f"reward-gpu-worker-{next(self._names)}", self._new_actor(gpu=True), gpu=True)
                 for _ in range(count)]
        self.slots.extend(fresh)
        results = await asyncio.gather(*(self._start_slot(s) for s in fresh), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self._abandon_growth(fresh)
            raise PoolUnavailable(f"{len(failed)} of {count} GPU reward workers failed to start: {failed[0]!r}")

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self.slots.clear()
        self.size = 0

    def _bind_loop(self) -> None:
        """Create the loop-bound primitives on first use, inside the serving event loop."""
        if self._changed is None:
            self._changed = asyncio.Event()
            self._resizing = asyncio.Lock()

    def _notify(self) -> None:
        """Wake everything waiting for a change of slot states or in-flight counts."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._changed.wait(), timeout_s)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _new_actor(self, gpu: bool = False) -> ray.actor.ActorHandle:
        cfg = self.config
        if gpu:
            return RewardWorkerActor.options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus_per_worker
                                             if cfg.gpu_uses_gpu else 0, resources=cfg.gpu_resources or None,
                                             max_restarts=cfg.max_restarts,
                                             max_task_retries=0).remote(self.gpu_reward_config)
        return RewardWorkerActor.options(num_cpus=cfg.num_cpus, resources=cfg.resources or None,
                                         max_restarts=cfg.max_restarts,
                                         max_task_retries=0).remote(self.reward_config)

    async def _await_ready(self, actor, timeout_s: float) -> int:
        """Wait until the actor answers (its pid); a restarting actor answers 'unavailable' until it is back."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"worker not ready within {timeout_s:g}s")
            try:
                return await asyncio.wait_for(actor.ready.remote(), remaining)
            except ActorUnavailableError:
                await asyncio.sleep(0.2)

    async def _start_slot(self, slot: WorkerSlot) -> None:
        slot.pid = await self._await_ready(slot.actor, self.config.ready_timeout_s)
        if slot.state is SlotState.STARTING:
            slot.state = SlotState.READY
        self._notify()

    # ---- resizing --------------------------------------------------------------------------------
    def size_limit(self) -> int:
        """The largest pool a resize may ask for: `max_workers`, and no more CPU workers than the
        cluster's CPUs hold at `num_cpus` each beside the GPU workers (ray.cluster_resources(): the
        nodes there now)."""
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        gpu_workers = sum(s.gpu for s in self.slots)
        return max(0, min(self.config.max_workers, int(cpus / self.config.num_cpus + 1e-9) - gpu_workers))

    def check_size(self, workers: int) -> None:
        """InvalidSize outside [min_workers, max_workers]; InsufficientResources beyond the cluster."""
        cfg = self.config
        if not cfg.min_workers <= workers <= cfg.max_workers:
            raise InvalidSize(f"workers: {workers} is outside [{cfg.min_workers}, {cfg.max_workers}] "
                              "(the pool's min_workers and max_workers)")
        limit = self.size_limit()
        if workers > limit:
            cpus = ray.cluster_resources().get("CPU", 0.0)
            raise InsufficientResources(f"workers: {workers} needs {workers * cfg.num_cpus:g} CPUs "
                                        f"({cfg.num_cpus:g} per worker); the Ray cluster has {cpus:g}, "
                                        f"room for {limit}")

    async def resize(self, workers: int) -> None:
        """Grow or shrink to `workers` actors while serving; returns when the new count is in place.

        Bounded by `check_size`. New workers take requests once ready; removed ones stop taking
        requests, finish what they run, and are then killed. A grow that fails, or whose caller
        gives up (cancellation), removes the new workers that are not ready yet (their actors are
        killed, pending ones never start) and the pool keeps the size it reached; a shrink whose
        caller gives up still finishes draining in the background. No slot is left 'starting'.
        """
        self.check_size(workers)
        self._bind_loop()
        async with self._resizing:
            active = [s for s in self.slots if s.state is not SlotState.DRAINING and not s.gpu]
            if len(active) < workers:
                self.size = workers
                fresh = [WorkerSlot(f"reward-worker-{next(self._names)}", self._new_actor())
                         for _ in range(workers - len(active))]
                self.slots.extend(fresh)
                try:
                    results = await asyncio.gather(*(self._start_slot(s) for s in fresh), return_exceptions=True)
                except BaseException:
                    self._abandon_growth(fresh)
                    raise
                failed = [(s, r) for s, r in zip(fresh, results) if isinstance(r, BaseException)]
                if failed:
                    self._abandon_growth(fresh)
                    raise PoolUnavailable(f"{len(failed)} of {len(fresh)} new reward workers failed to start: "
                                          f"{failed[0][1]!r}")
            elif len(active) > workers:
                self.size = workers
                order = {SlotState.STARTING: 0, SlotState.RECOVERING: 1, SlotState.READY: 2}
                victims = sorted(active, key=lambda s: (order[s.state], s.in_flight))[:len(active) - workers]
                for slot in victims:
                    slot.state = SlotState.DRAINING
                self._notify()
                drains = [self._spawn(self._drain(s)) for s in victims]  # finish even if the caller leaves
                await asyncio.shield(asyncio.gather(*drains))
            else:
                self.size = workers

    def _abandon_growth(self, fresh: list[WorkerSlot]) -> None:
        for slot in fresh:
            if slot.state is SlotState.STARTING:
                self._remove(slot)
        self.size = sum(s.state is not SlotState.DRAINING and not s.gpu for s in self.slots)
        self._notify()

    async def _drain(self, slot: WorkerSlot) -> None:
        while slot.in_flight:
            await self._wait_change()
        self._remove(slot)
        self._notify()

    def _remove(self, slot: WorkerSlot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)

    # ---- failures --------------------------------------------------------------------------------
    def _worker_failed(self, slot: WorkerSlot, err: BaseException) -> None:
        if slot.state is SlotState.READY:
            log.warning("%s failed a task (%s); checking it", slot.name, type(err).__name__)
            slot.state = SlotState.RECOVERING
            self._spawn(self._recover(slot))

    async def _recover(self, slot: WorkerSlot) -> None:
        """Wait for the actor to answer again: a new pid is a restart (counted), the same pid a worker
        that was only unreachable (not counted). Replace the actor when it is dead for good."""
        try:
            pid = await self._await_ready(slot.actor, self.config.ready_timeout_s)
        except (RayActorError, asyncio.TimeoutError) as err:
            ray.kill(slot.actor, no_restart=True)
            if slot not in self.slots:
                return
            log.warning("%s did not come back (%s); replacing it", slot.name, type(err).__name__)
            slot.actor = self._new_actor(slot.gpu)
            try:
                pid = await self._await_ready(slot.actor, self.config.ready_timeout_s)
            except (RayActorError, asyncio.TimeoutError) as again:
                log.error("replacement for %s failed to start (%r); dropping the slot", slot.name, again)
                self._remove(slot)
                self._notify()
                return
        if pid != slot.pid:
            self.counters["restarts"] += 1
        else:
            log.warning("%s answers again from the same process (pid %s): it was not restarted", slot.name, pid)
        slot.pid = pid
        if slot.state is SlotState.RECOVERING:
            slot.state = SlotState.READY
        if slot not in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self._notify()

    # ---- targets ---------------------------------------------------------------------------------
    def has_target(self, key: str) -> bool:
        """Whether `key` is registered (and mark it recently used)."""
        if key not in self.targets:
            return False
        self.targets.move_to_end(key)
        return True

    async def put_target(self, key: str, image: bytes) -> int:
        """Decode and keep a target on every ready worker (others get it when they first need it).

        A bad image raises RequestError naming the target, and the key is left as it was. Beyond
        `max_target_store_bytes` of encoded images the least recently used keys are dropped (here
        and on the workers); a request naming a dropped key gets UnknownTarget.
        """
        if len(image) > self.config.max_target_store_bytes:
            raise RequestError(f"target: {len(image)} bytes exceeds the pool's whole target store "
                               f"(max_target_store_bytes {self.config.max_target_store_bytes})")
        ready = [s for s in self.slots if s.state is SlotState.READY]
        if not ready:
            raise PoolUnavailable("no ready reward worker to validate the target")
        version = next(self._versions)
        await ready[0].actor.put_target.remote(key, image, version)
        dropped = self._register(key, image, version)
        calls = [s.actor.put_target.remote(key, image, version) for s in ready[1:]]
        if dropped:
            calls += [s.actor.drop_targets.remote(dropped) for s in ready]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return 1 + sum(not isinstance(r, BaseException) for r in results[:len(ready) - 1])

    def _register(self, key: str, image: bytes, version: int) -> list[str]:
        """Record the key's image; return the least recently used keys dropped to stay in budget."""
        old = self.targets.pop(key, None)
        if old is not None:
            self.target_bytes -= len(old[0])
        dropped = []
        while self.targets and self.target_bytes + len(image) > self.config.max_target_store_bytes:
            gone, (data, _) = self.targets.popitem(last=False)
            self.target_bytes -= len(data)
            dropped.append(gone)
        self.targets[key] = (image, version)
        self.target_bytes += len(image)
        if dropped:
            log.info("target store full: dropped %d least recently used key(s)", len(dropped))
        return dropped

    async def delete_target(self, key: str) -> int:
        """Forget a key here and on every worker (UnknownTarget if it is not registered); returns
        how many workers held it."""
        entry = self.targets.pop(key, None)
        if entry is None:
            raise UnknownTarget(f"target: unknown target key {key!r}")
        self.target_bytes -= len(entry[0])
        live = [s for s in self.slots if s.state in (SlotState.READY, SlotState.DRAINING)]
        results = await asyncio.gather(*(s.actor.drop_targets.remote([key]) for s in live), return_exceptions=True)
        return sum(r for r in results if isinstance(r, int))

    async def _give_target(self, slot: WorkerSlot, key: str) -> None:
        """Put a registered target onto a worker that lacks it (restarted, started later, evicted it)."""
        entry = self.targets.get(key)
        if entry is None:
            return
        try:
            await slot.actor.put_target.remote(key, entry[0], entry[1])
        except RayActorError as err:
            self._worker_failed(slot, err)

    # ---- dispatch --------------------------------------------------------------------------------
    def _cap(self, slot: WorkerSlot) -> int:
        return self.config.gpu_max_in_flight if slot.gpu else self.config.max_in_flight

    def _task_size(self, slot: WorkerSlot, rows: int, cpu_task: int | None) -> int:
        """Rows `slot` would take of `rows` left (score_split cuts by worker kind)."""
        return min(rows, self.config.gpu_task_samples if slot.gpu else (cpu_task or rows))

    def _pick(self, rows: int = 1, cpu_task: int | None = None) -> WorkerSlot | None:
        """The worker the next task goes to, or None to wait for one.

        CPU-only pools (and mixed pools until every worker has a measured rate): the ready worker with
        the fewest tasks in flight, round-robin among equals, once one has room. Mixed pools: the
        worker expected to finish the task first, (tasks queued there × their mean size + this
        task's rows) / its measured samples/s, waiting for it when it is full. A GPU worker scores
        thousands of samples/s and a CPU worker ~10-100 at 256²: least-in-flight dispatch gave each
        CPU worker a target's 8 samples (~1 s of work) while the GPU worker, done in milliseconds,
        sat idle, so one GPU reward actor beside 12 CPU workers did not shorten an H200 iteration."""
        ready = [s for s in self.slots if s.state is SlotState.READY]
        free = [s for s in ready if s.in_flight < self._cap(s)]
        if not any(s.gpu for s in ready) or any(s.rate <= 0 for s in ready):
            return min(free, key=lambda s: (s.in_flight, s.dispatched)) if free else None

        def finish(s: WorkerSlot) -> tuple:
            return ((s.in_flight * s.task_samples + self._task_size(s, rows, cpu_task)) / s.rate,
                    s.in_flight, s.dispatched)
        best = min(ready, key=finish)
        return best if best.in_flight < self._cap(best) else None

    def _measured(self, slot: WorkerSlot, rows: int, sent_at: float) -> None:
        """Update `slot`'s rate from a task of `rows` that came back now (its service time: from when
        it was sent, or from the previous task's return if it waited behind that one)."""
        now = time.monotonic()
        service = now - max(sent_at, slot.free_at)
        slot.free_at = now
        if service <= 0 or rows <= 0:
            return
        rate = rows / service
        slot.rate = rate if slot.rate <= 0 else 0.7 * slot.rate + 0.3 * rate
        slot.task_samples = rows if slot.task_samples <= 0 else 0.7 * slot.task_samples + 0.3 * rows

    async def _acquire(self, deadline: float, rows: int = 1, cpu_task: int | None = None) -> WorkerSlot:
        """A worker for the next task (`_pick`), counted in flight; waits until one has room."""
        while True:
            slot = self._pick(rows, cpu_task)
            if slot is not None:
                slot.in_flight += 1
                slot.dispatched += 1
                return slot
            if not self.slots:
                raise PoolUnavailable("the reward pool has no workers")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError("no reward worker was free before the deadline")
            await self._wait_change(remaining)

    def _release(self, slot: WorkerSlot) -> None:
        slot.in_flight -= 1
        self._notify()

    async def score(self, request: ScoreRequest, timeout_s: float | None = None) -> list[ScoreResult]:
        """Score on the least-loaded worker; re-dispatch if that worker dies.

        `timeout_s` bounds the whole call (asyncio.TimeoutError when it passes): a task still waiting
        in the pool is dropped, and the worker gets the deadline, so it skips a task that reaches it
        too late and stops executing one that runs out of time. A task the caller gives up on
        (timeout or cancellation) after it was sent is cancelled on the worker (`_abandon`), never
        with ray.cancel. Raises RequestError for a malformed request, UnknownTarget,
        PoolUnavailable, WorkerCrashed.
        """
        self._bind_loop()
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.ready_timeout_s)
        return await self._run_task(request, deadline, timeout_s is not None)

    async def score_split(self, request: ScoreRequest, timeout_s: float | None = None,
                          task_samples: int = 64) -> list[ScoreResult]:
        """Score a request of any size as tasks cut while workers become free: each free worker (least
        in flight first) takes the next `task_samples` rows, a GPU worker the next `gpu_task_samples`.

        Task sizes thus follow the worker kind: a CPU worker scores ~20 samples/s and a 64-row task
        keeps it busy for seconds, while a GPU worker needs thousands of rows per call to be faster
        than its launch and transfer overheads. Rows are cut only when a worker can take them, so a
        fast worker that comes back early takes the next slice and a mixed pool balances by
        throughput. Errors and the deadline behave as in `score`; the first failed task cancels the
        others.
        """
        self._bind_loop()
        n = len(request.seeds)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.ready_timeout_s)
        bounded = timeout_s is not None
        if n == 0 or (n <= task_samples and not any(s.gpu for s in self.slots)):
            return await self._run_task(request, deadline, bounded)
        running: list[tuple[int, asyncio.Task]] = []
        lo = 0
        try:
            while lo < n:
                for _, task in running:
                    if task.done() and task.exception() is not None:
                        raise task.exception()
                slot = await self._acquire(deadline, n - lo, task_samples)
                size = self._task_size(slot, n - lo, task_samples)
                part = _rows(request, lo, lo + size)
                task = asyncio.ensure_future(self._run_task(part, deadline, bounded, slot))
                task.add_done_callback(_retrieve)
                running.append((lo, task))
                lo += size
            done, _ = await asyncio.wait([t for _, t in running], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
            return [result for _, task in sorted(running, key=lambda item: item[0]) for result in task.result()]
        finally:
            for _, task in running:
                task.cancel()

    async def _run_task(self, request: ScoreRequest, deadline: float, bounded: bool,
                        slot: WorkerSlot | None = None) -> list[ScoreResult]:
        """One task until it is scored: on `slot` if given (already counted in flight), else on the
        least-loaded worker; again elsewhere if the worker dies (see `score`)."""
        failures: list[str] = []
        key = request.target if isinstance(request.target, str) else None
        while True:
            version = None
            if key is not None:
                if key not in self.targets:
                    if slot is not None:
                        self._release(slot)
                    raise UnknownTarget(f"target: unknown target key {key!r}; register it with PutTarget")
                version = self.targets[key][1]
            if slot is None:
                slot = await self._acquire(deadline, len(request.seeds))
            task_id = f"t{next(self._task_ids)}"
            sent_at = time.monotonic()
            remaining = deadline - sent_at
            ref = slot.actor.score.remote(request, time.time() + remaining if bounded else None, task_id, version)
            done = asyncio.wrap_future(ref.future())
            try:
                results = await asyncio.wait_for(asyncio.shield(done), max(remaining, 0.0))
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._abandon(slot, task_id, done)
                raise
            except RayActorError as err:
                self._release(slot)
                self._worker_failed(slot, err)
                failures.append(f"{slot.name}: {type(err).__name__}")
                if len(failures) >= self.config.max_attempts:
                    raise WorkerCrashed(f"the task's worker died {len(failures)} times: {failures}") from None
                self.counters["retries"] += 1
                slot = None
                continue
            except MissingTarget:
                self._release(slot)
                failures.append(f"{slot.name}: missing target {key!r}")
                if len(failures) >= self.config.max_attempts + 1:
                    raise WorkerCrashed(f"could not place the target on a worker: {failures}") from None
                await self._give_target(slot, key)
                slot = None
                continue
            except BaseException:
                self._release(slot)
                raise
            self._measured(slot, len(request.seeds), sent_at)
            self._release(slot)
            self.counters["tasks"] += 1
            return results

    def _abandon(self, slot: WorkerSlot, task_id: str, done: asyncio.Future) -> None:
        """The caller gave up on a task already sent: ask the worker to skip or stop it, and keep the
        slot's in-flight count until the worker is done with it (so the pool never queues more than
        `max_in_flight` tasks on a worker that is still busy with abandoned ones)."""
        self.counters["abandoned"] += 1
        if done.done():
            if not done.cancelled():
                done.exception()  # retrieve it, so asyncio logs no "exception was never retrieved"
            self._release(slot)
            return
        cancel = asyncio.wrap_future(slot.actor.cancel.remote(task_id).future())
        self._spawn(self._settle(slot, done, cancel))

    async def _settle(self, slot: WorkerSlot, *futures: asyncio.Future) -> None:
        try:
            for future in futures:
                try:
                    await future
                except RayActorError as err:
                    self._worker_failed(slot, err)
                except Exception:  # noqa: BLE001 — the abandoned task's outcome has no reader
                    pass
        finally:
            self._release(slot)

    # ---- reporting -------------------------------------------------------------------------------
    def status(self) -> dict[str, int]:
        count = {state: sum(s.state is state for s in self.slots) for state in SlotState}
        gpu = sum(s.gpu for s in self.slots)  # counted in `workers`; resizes change the CPU workers only
        return {"workers": self.size + gpu, "ready": count[SlotState.READY], "starting": count[SlotState.STARTING],
                "recovering": count[SlotState.RECOVERING], "draining": count[SlotState.DRAINING],
                "in_flight": sum(s.in_flight for s in self.slots), "targets": len(self.targets),
                "target_bytes": self.target_bytes, **self.counters}

    async def worker_stats(self) -> list[dict[str, int]]:
        ready = [s for s in self.slots if s.state is SlotState.READY]
        return list(await asyncio.gather(*(s.actor.stats.remote() for s in ready)))


def _retrieve(task: asyncio.Task) -> None:
    """Mark a task's exception as seen (a sibling's failure is the one reported)."""
    if not task.cancelled():
        task.exception()


def _rows(request: ScoreRequest, lo: int, hi: int) -> ScoreRequest:
    """Rows [lo, hi) of a request (same structure, target and deadline)."""
    return dataclasses.replace(request, seeds=request.seeds[lo:hi],
                               param_sets=None if request.param_sets is None else request.param_sets[lo:hi],
                               tokens=None if request.tokens is None else request.tokens[lo:hi])


__all__ = ["DeadlinePassed", "InsufficientResources", "InvalidSize", "MissingTarget", "PoolConfig", "PoolUnavailable",
           "RewardPool", "RewardWorkerActor", "RewardWorkerShell", "TaskCancelled", "UnknownTarget", "WorkerCrashed"]
