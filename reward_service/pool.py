"""A pool of reward-worker Ray actors: least-in-flight dispatch, re-dispatch when a worker dies,
restart or replacement of dead workers, and resizing while requests are being served.

`RewardWorkerShell` is the actor body (a thin shell around `RewardWorker`); `RewardPool` is an
asyncio object living in the gRPC server's event loop, so its bookkeeping needs no locks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import os
import time
from dataclasses import dataclass

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.exceptions import ActorUnavailableError, RayActorError

from reward_service.config import RewardConfig
from reward_service.api import ScoreRequest, ScoreResult
from reward_service.worker import RewardWorker

log = logging.getLogger(__name__)


class PoolConfig(BaseModel):
    """How many reward workers, what each reserves, and how hard the pool tries to keep them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int = Field(2, ge=0)
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker actor")
    max_restarts: int = Field(3, ge=-1, description="Ray restarts of one actor before the pool replaces it")
    max_attempts: int = Field(3, ge=1, description="dispatches of one task: the first plus re-dispatches "
                                                   "after the worker running it died")
    ready_timeout_s: float = Field(600.0, gt=0, description="wait for a worker to start or come back")
    max_in_flight: int = Field(2, ge=1, description="tasks sent to one worker at a time (one running, the "
                                                    "rest queued there); more wait in the pool, where a "
                                                    "deadline or cancellation drops them before any work")


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


class RewardWorkerShell:
    """Ray actor body: one RewardWorker (torch threads = 1 by its config) in its own process."""

    def __init__(self, config: RewardConfig):
        self.worker = RewardWorker(config)

    def ready(self) -> int:
        return os.getpid()

    def score(self, request: ScoreRequest, deadline_unix: float | None = None) -> list[ScoreResult]:
        """Score, given the caller's wall-clock deadline: time spent queued here counts against it
        (ray.cancel does not stop a task already queued at a sync actor, so the shell checks)."""
        if deadline_unix is not None:
            remaining = deadline_unix - time.time()
            if remaining <= 0:
                raise DeadlinePassed(f"deadline passed {-remaining:.3f}s before the task started")
            request = dataclasses.replace(request, timeout_s=remaining)
        if isinstance(request.target, str) and request.target not in self.worker.target_store:
            raise MissingTarget(request.target)
        return self.worker.score(request)

    def put_targets(self, targets: dict[str, bytes]) -> int:
        for key, image in targets.items():
            self.worker.put_target(key, image)
        return len(self.worker.target_store)

    def stats(self) -> dict[str, int]:
        return self.worker.stats()


RewardWorkerActor = ray.remote(num_cpus=1)(RewardWorkerShell)


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


class RewardPool:
    """K reward-worker actors behind one `score` coroutine. Start with `await pool.start()`."""

    def __init__(self, reward_config: RewardConfig = RewardConfig(), config: PoolConfig = PoolConfig()):
        self.reward_config = reward_config
        self.config = config
        self.slots: list[WorkerSlot] = []
        self.size = 0
        self.targets: dict[str, bytes] = {}
        self.counters = {"tasks": 0, "retries": 0, "restarts": 0}
        self._names = itertools.count()
        self._changed: asyncio.Event | None = None
        self._resizing: asyncio.Lock | None = None
        self._background: set[asyncio.Task] = set()

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> "RewardPool":
        await self.resize(self.config.workers)
        return self

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

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _new_actor(self) -> ray.actor.ActorHandle:
        return RewardWorkerActor.options(num_cpus=self.config.num_cpus, max_restarts=self.config.max_restarts,
                                         max_task_retries=0).remote(self.reward_config)

    async def _await_ready(self, actor, timeout_s: float) -> None:
        """Wait until the actor answers; a restarting actor answers 'unavailable' until it is back."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"worker not ready within {timeout_s:g}s")
            try:
                await asyncio.wait_for(actor.ready.remote(), remaining)
                return
            except ActorUnavailableError:
                await asyncio.sleep(0.2)

    async def _start_slot(self, slot: WorkerSlot) -> None:
        await self._await_ready(slot.actor, self.config.ready_timeout_s)
        if slot.state is SlotState.STARTING:
            slot.state = SlotState.READY
        self._notify()

    # ---- resizing --------------------------------------------------------------------------------
    async def resize(self, workers: int) -> None:
        """Grow or shrink to `workers` actors while serving; returns when the new count is in place.

        New workers take requests once ready; removed ones stop taking requests, finish what they
        run, and are then killed.
        """
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._bind_loop()
        async with self._resizing:
            self.size = workers
            active = [s for s in self.slots if s.state is not SlotState.DRAINING]
            if len(active) < workers:
                fresh = [WorkerSlot(f"reward-worker-{next(self._names)}", self._new_actor())
                         for _ in range(workers - len(active))]
                self.slots.extend(fresh)
                results = await asyncio.gather(*(self._start_slot(s) for s in fresh), return_exceptions=True)
                failed = [(s, r) for s, r in zip(fresh, results) if isinstance(r, BaseException)]
                for slot, _ in failed:
                    self._remove(slot)
                if failed:
                    raise PoolUnavailable(f"{len(failed)} of {len(fresh)} new reward workers failed to start: "
                                          f"{failed[0][1]!r}")
            elif len(active) > workers:
                order = {SlotState.STARTING: 0, SlotState.RECOVERING: 1, SlotState.READY: 2}
                victims = sorted(active, key=lambda s: (order[s.state], s.in_flight))[:len(active) - workers]
                for slot in victims:
                    slot.state = SlotState.DRAINING
                self._notify()
                await asyncio.gather(*(self._drain(s) for s in victims))

    async def _drain(self, slot: WorkerSlot) -> None:
        while slot.in_flight:
            await self._wait_change()
        self._remove(slot)

    def _remove(self, slot: WorkerSlot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)

    # ---- failures --------------------------------------------------------------------------------
    def _worker_failed(self, slot: WorkerSlot, err: BaseException) -> None:
        if slot.state is SlotState.READY:
            log.warning("%s died (%s); recovering", slot.name, type(err).__name__)
            slot.state = SlotState.RECOVERING
            self._spawn(self._recover(slot))

    async def _recover(self, slot: WorkerSlot) -> None:
        """Wait for Ray to restart the actor; replace it when it is dead for good."""
        try:
            await self._await_ready(slot.actor, self.config.ready_timeout_s)
        except (RayActorError, asyncio.TimeoutError) as err:
            ray.kill(slot.actor, no_restart=True)
            if slot not in self.slots:
                return
            log.warning("%s did not come back (%s); replacing it", slot.name, type(err).__name__)
            slot.actor = self._new_actor()
            try:
                await self._await_ready(slot.actor, self.config.ready_timeout_s)
            except (RayActorError, asyncio.TimeoutError) as again:
                log.error("replacement for %s failed to start (%r); dropping the slot", slot.name, again)
                self._remove(slot)
                self._notify()
                return
        self.counters["restarts"] += 1
        if slot.state is SlotState.RECOVERING:
            slot.state = SlotState.READY
        if slot not in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self._notify()

    # ---- targets ---------------------------------------------------------------------------------
    async def put_target(self, key: str, image: bytes) -> int:
        """Decode and keep a target on every ready worker (others get it when they first need it).

        A bad image raises RequestError naming the target, and the key is not registered.
        """
        ready = [s for s in self.slots if s.state is SlotState.READY]
        if not ready:
            raise PoolUnavailable("no ready reward worker to validate the target")
        await ready[0].actor.put_targets.remote({key: image})
        self.targets[key] = image
        results = await asyncio.gather(*(s.actor.put_targets.remote({key: image}) for s in ready[1:]),
                                       return_exceptions=True)
        return 1 + sum(not isinstance(r, BaseException) for r in results)

    # ---- dispatch --------------------------------------------------------------------------------
    async def _acquire(self, deadline: float) -> WorkerSlot:
        """The ready worker with the fewest tasks in flight (round-robin among equals), once one
        has fewer than `max_in_flight`."""
        while True:
            ready = [s for s in self.slots
                     if s.state is SlotState.READY and s.in_flight < self.config.max_in_flight]
            if ready:
                slot = min(ready, key=lambda s: (s.in_flight, s.dispatched))
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
        too late and stops executing one that runs out of time. Raises RequestError for a malformed
        request, UnknownTarget, PoolUnavailable, WorkerCrashed.
        """
        self._bind_loop()
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.ready_timeout_s)
        failures: list[str] = []
        while True:
            slot = await self._acquire(deadline)
            try:
                remaining = deadline - time.monotonic()
                ref = slot.actor.score.remote(request, time.time() + remaining if timeout_s is not None else None)
                try:
                    results = await asyncio.wait_for(ref, max(remaining, 0.0))
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    ray.cancel(ref)
                    raise
            except RayActorError as err:
                self._worker_failed(slot, err)
                failures.append(f"{slot.name}: {type(err).__name__}")
                if len(failures) >= self.config.max_attempts:
                    raise WorkerCrashed(f"the task's worker died {len(failures)} times: {failures}") from None
                self.counters["retries"] += 1
                continue
            except MissingTarget:
                if request.target not in self.targets:
                    raise UnknownTarget(f"target: unknown target key {request.target!r}; "
                                        "register it with PutTarget") from None
                failures.append(f"{slot.name}: missing target {request.target!r}")
                if len(failures) >= self.config.max_attempts + 1:
                    raise WorkerCrashed(f"could not place the target on a worker: {failures}") from None
                await self._give_targets(slot)
                continue
            finally:
                self._release(slot)
            self.counters["tasks"] += 1
            return results

    async def _give_targets(self, slot: WorkerSlot) -> None:
        """Replay the registered targets onto a worker that lost them (restarted, or started later)."""
        try:
            await slot.actor.put_targets.remote(dict(self.targets))
        except RayActorError as err:
            self._worker_failed(slot, err)

    # ---- reporting -------------------------------------------------------------------------------
    def status(self) -> dict[str, int]:
        count = {state: sum(s.state is state for s in self.slots) for state in SlotState}
        return {"workers": self.size, "ready": count[SlotState.READY], "starting": count[SlotState.STARTING],
                "recovering": count[SlotState.RECOVERING], "draining": count[SlotState.DRAINING],
                "in_flight": sum(s.in_flight for s in self.slots), **self.counters}

    async def worker_stats(self) -> list[dict[str, int]]:
        ready = [s for s in self.slots if s.state is SlotState.READY]
        return list(await asyncio.gather(*(s.actor.stats.remote() for s in ready)))


__all__ = ["DeadlinePassed", "MissingTarget", "PoolConfig", "PoolUnavailable", "RewardPool", "RewardWorkerActor",
           "RewardWorkerShell", "UnknownTarget", "WorkerCrashed"]
