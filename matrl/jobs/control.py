"""Elastic worker counts of a running `matrl train` job.

The job registers a `JobControl` actor under the name `matrl-train:<job name>` in the Ray namespace
`matrl`. `matrl scale` (another process, any machine that can reach the cluster) finds it and asks
for new counts; the job reads them at the start of its next iteration and adds or removes rollout
workers and reward workers then, so no running rollout is cut short and no trajectory is lost.
Requests outside the job's `min_workers`/`max_workers` bounds are refused with the bounds in the
message. New actors that need resources the cluster does not have wait for the Ray autoscaler to
add nodes of the right type (`cluster.yaml`).
"""

from __future__ import annotations

import time

NAMESPACE = "matrl"
PREFIX = "matrl-train:"


class ScaleError(ValueError):
    """A scale request the job cannot take; the message says why."""


class JobControl:
    """Desired and live worker counts of one job (a plain class; the actor is a thin shell)."""

    def __init__(self, job: str, bounds: dict[str, tuple[int, int]], desired: dict[str, int], elastic_reward: bool):
        self.job = job
        self.bounds = {k: (int(lo), int(hi)) for k, (lo, hi) in bounds.items()}
        self._desired = dict(desired)
        self._live = dict(desired)
        self.elastic_reward = elastic_reward
        self.requests = 0
        self.updated_at = time.time()

    def request(self, rollout: int | None = None, reward: int | None = None) -> dict:
        """Ask for new counts (None keeps one); returns the status after the request."""
        asked = {"rollout": rollout, "reward": reward}
        for role, count in asked.items():
            if count is None:
                continue
            if role == "reward" and not self.elastic_reward:
                raise ScaleError("this job scores with an external reward service (reward.address): resize that "
                                 "service with its own admin Resize call")
            lo, hi = self.bounds[role]
            if not lo <= count <= hi:
                raise ScaleError(f"{role} workers {count} outside this job's bounds [{lo}, {hi}] "
                                 f"({role}.min_workers / {role}.max_workers of its config)")
        for role, count in asked.items():
            if count is not None:
                self._desired[role] = int(count)
        self.requests += 1
        self.updated_at = time.time()
        return self.status()

    def desired(self) -> dict[str, int]:
        return dict(self._desired)

    def report(self, live: dict[str, int]) -> None:
        self._live.update({k: int(v) for k, v in live.items()})

    def status(self) -> dict:
        return {"job": self.job, "desired": dict(self._desired), "live": dict(self._live),
                "bounds": {k: list(v) for k, v in self.bounds.items()}, "requests": self.requests}


def find_control(job: str | None = None):
    """The control actor of `job`, or of the only running `matrl train` job when `job` is None."""
    import ray
    from ray.util.state import list_actors

    if job is not None:
        try:
            return ray.get_actor(PREFIX + job, namespace=NAMESPACE)
        except ValueError:
            raise ScaleError(f"no running matrl train job named {job!r} on this cluster") from None
    names = sorted(a.name for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
                   if a.name and a.name.startswith(PREFIX) and (a.ray_namespace in (None, NAMESPACE)))
    if not names:
        raise ScaleError("no running matrl train job on this cluster")
    if len(names) > 1:
        raise ScaleError("several matrl train jobs run here; pick one with --job: "
                         + ", ".join(n[len(PREFIX):] for n in names))
    return ray.get_actor(names[0], namespace=NAMESPACE)
