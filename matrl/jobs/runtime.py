"""Where a job's roles run: in this process (`LocalRuntime`) or as Ray actors (`RayRuntime`).

The training loop (`matrl.jobs.train`) talks to its roles only through this interface, so the same
loop runs in-process for debugging and fast tests, and on a Ray cluster in production (the way
`learner.pretrain.WorkerContext` lets one pre-training loop run alone or under Ray Train).

    handle = runtime.actor(Cls, *args, name="learner", options={"num_gpus": 1})
    future = runtime.call(handle, "update", seed, iteration)
    ready, pending = runtime.wait([future, ...], timeout_s=1.0)
    value = runtime.get(future)          # raises RoleDied if the actor died, the call's error otherwise

In-process calls run at once, so their futures are always ready; failures are re-raised by `get`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence


class RoleDied(RuntimeError):
    """The actor running a call died (its process exited or was killed)."""


@dataclass(eq=False)
class LocalFuture:
    value: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class LocalHandle:
    obj: Any
    name: str = ""
    options: dict = field(default_factory=dict)


class LocalRuntime:
    """Everything in this process; calls execute when made."""

    distributed = False

    def actor(self, cls, *args, name: str = "", options: dict | None = None) -> LocalHandle:
        return LocalHandle(cls(*args), name, dict(options or {}))

    def call(self, handle: LocalHandle, method: str, *args) -> LocalFuture:
        try:
            return LocalFuture(getattr(handle.obj, method)(*args))
        except Exception as err:  # noqa: BLE001 - handed to whoever calls get()
            return LocalFuture(error=err)

    def get(self, future: LocalFuture, timeout_s: float | None = None) -> Any:
        if future.error is not None:
            raise future.error
        return future.value

    def wait(self, futures: Sequence[LocalFuture], timeout_s: float | None = None, num_returns: int = 1):
        return list(futures), []

    def put(self, obj: Any) -> Any:
        return obj

    def kill(self, handle: LocalHandle) -> None:
        close = getattr(handle.obj, "close", None)
        if close is not None:
            close()

    def inner(self, handle: LocalHandle) -> Any:
        """What other roles receive to reach this one (the object itself in-process)."""
        return handle.obj


class RayRuntime:
    """Each role a Ray actor; options are Ray's actor options (num_cpus, num_gpus, resources, ...)."""

    distributed = True

    def __init__(self):
        import ray

        self.ray = ray

    def actor(self, cls, *args, name: str = "", options: dict | None = None):
        opts = {k: v for k, v in (options or {}).items() if v is not None}
        env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else None
        if env and "runtime_env" not in opts:
            opts["runtime_env"] = {"env_vars": env}
        return self.ray.remote(cls).options(**opts).remote(*args)

    def call(self, handle, method: str, *args):
        return getattr(handle, method).remote(*args)

    def get(self, future, timeout_s: float | None = None) -> Any:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

        try:
            return self.ray.get(future, timeout=timeout_s)
        except GetTimeoutError:
            raise RoleDied(f"no answer within {timeout_s:g}s") from None
        except (ActorDiedError, ActorUnavailableError, RayActorError) as err:
            raise RoleDied(str(err).splitlines()[0] if str(err) else type(err).__name__) from err

    def wait(self, futures: Sequence, timeout_s: float | None = None, num_returns: int = 1):
        if not futures:
            return [], []
        return self.ray.wait(list(futures), num_returns=min(num_returns, len(futures)), timeout=timeout_s)

    def put(self, obj: Any):
        return self.ray.put(obj)

    def kill(self, handle) -> None:
        try:
            self.ray.kill(handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def inner(self, handle):
        return handle
