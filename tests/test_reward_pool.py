"""The reward-worker pool under the server: balancing, resizing while serving, dead workers.

Real Ray actors (K <= 2 on this box) behind a real gRPC server on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import ray
from ray.exceptions import RayActorError

from reward_service.client import RewardClient
from reward_service.config import MetricConfig, RewardConfig
from reward_service.pool import PoolConfig, RewardPool, SlotState
from reward_service.server import BackgroundServer, ServerConfig
from reward_service.worker import ScoreRequest
from tests.service_helpers import local_ray_service

REWARD = RewardConfig(res=64, metric=MetricConfig(image_res=64))
GRAPH = json.dumps({"format": "matrl.graph/1", "name": "pooled", "nodes": {
    "noise": {"type": "perlin_fbm", "params": {"scale": 4}},
    "out": {"type": "output", "inputs": {"basecolor": "noise", "height": "noise"}}}})
TARGET = (np.random.default_rng(0).random((64, 64, 3))).astype(np.float32)
CHUNK = 64


def request(n: int, target=TARGET) -> ScoreRequest:
    return ScoreRequest(structure=GRAPH, seeds=list(range(n)), target=target,
                        param_sets=[{"noise": {"persistence": 0.1 + 0.8 * (i % 17) / 17}} for i in range(n)])


ADMIN = "admin-token-pool"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with local_ray_service() as start:
        admin_file = tmp_path_factory.mktemp("admin") / "admin_token"
        admin_file.write_text(ADMIN)
        server = BackgroundServer(RewardPool(REWARD, PoolConfig(workers=1, max_restarts=1, min_workers=0)),
                                  ServerConfig(port=0, chunk_samples=CHUNK, admin_token_file=admin_file))
        yield start(server)


@pytest.fixture
def client(service):
    with RewardClient(service.address, timeout_s=120, admin_token=ADMIN) as c:
        yield c


def wait_for(predicate, timeout_s: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ready_slots(service):
    return [s for s in service.pool.slots if s.state is SlotState.READY]


def per_worker_requests(service) -> list[int]:
    return [s["requests"] for s in service.run(service.pool.worker_stats())]


class Traffic:
    """A client thread sending requests back to back until stopped; keeps results and errors."""

    def __init__(self, client: RewardClient, n: int = 8):
        self.client, self.n = client, n
        self.results, self.errors = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.results.append(self.client.score(request(self.n)))
            except Exception as err:  # noqa: BLE001 — recorded, asserted empty by the test
                self.errors.append(err)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(120)


def test_resize_1_2_1_while_serving(service, client):
    assert client.pool_status()["ready"] == 1
    with Traffic(client) as traffic:
        wait_for(lambda: len(traffic.results) >= 2, what="traffic")
        status = client.resize(2)
        assert (status["workers"], status["ready"]) == (2, 2)
        before = per_worker_requests(service)
        wait_for(lambda: all(a > b for a, b in zip(per_worker_requests(service), before)),
                 what="both workers to serve")
        removed = {s.actor for s in service.pool.slots}
        status = client.resize(1)
        assert (status["workers"], status["ready"], status["draining"]) == (1, 1, 0)
        served = len(traffic.results)
        wait_for(lambda: len(traffic.results) >= served + 2, what="traffic after shrinking")
    assert traffic.errors == []
    assert all(r.ok for results in traffic.results for r in results)
    removed -= {s.actor for s in service.pool.slots}
    assert len(removed) == 1
    with pytest.raises(RayActorError):
        ray.get(removed.pop().ready.remote(), timeout=60)


def test_tasks_go_to_the_least_loaded_worker(service, client):
    client.resize(2)
    before = per_worker_requests(service)
    results = client.score(request(4 * CHUNK))
    assert len(results) == 4 * CHUNK and all(r.ok for r in results)
    after = per_worker_requests(service)
    assert [a - b for a, b in zip(after, before)] == [2, 2]


def test_a_worker_killed_mid_request_is_retried_and_restarted(service, client):
    client.resize(2)
    big = request(4 * CHUNK)
    expected = [r.reward for r in client.score(big)]
    pids = {s.name: ray.get(s.actor.ready.remote()) for s in service.pool.slots}
    outcome = {}
    caller = threading.Thread(target=lambda: outcome.update(results=client.score(big)))
    retries = client.pool_status()["retries"]
    caller.start()
    wait_for(lambda: any(s.in_flight for s in service.pool.slots), what="a task in flight")
    victim = next(s for s in service.pool.slots if s.in_flight)
    ray.kill(victim.actor, no_restart=False)
    caller.join(300)
    assert [r.reward for r in outcome["results"]] == pytest.approx(expected, abs=1e-6)
    status = client.pool_status()
    assert status["retries"] > retries
    wait_for(lambda: len(ready_slots(service)) == 2, what="the pool to restore 2 workers")
    assert client.pool_status()["restarts"] >= 1
    assert ray.get(victim.actor.ready.remote()) != pids[victim.name]  # same handle, restarted process


def test_a_worker_killed_for_good_is_replaced_and_gets_the_registered_targets(service, client):
    client.resize(2)
    wait_for(lambda: len(ready_slots(service)) == 2, what="2 ready workers")
    png = _png()
    assert client.put_target("photo", png) == 2
    victim = service.pool.slots[0]
    dead = victim.actor
    ray.kill(dead, no_restart=True)
    by_key = client.score(request(4 * CHUNK, target="photo"))  # reaches the dead worker first, or not
    assert all(r.ok for r in by_key)
    wait_for(lambda: len(ready_slots(service)) == 2, what="the pool to replace the dead worker")
    assert victim.actor is not dead
    before = per_worker_requests(service)
    again = client.score(request(4 * CHUNK, target="photo"))
    assert [r.reward for r in again] == pytest.approx([r.reward for r in by_key], abs=1e-6)
    assert all(a > b for a, b in zip(per_worker_requests(service), before))  # the new worker scored by key


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((TARGET * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_empty_pool_reports_not_serving_and_unavailable(service, client):
    import grpc

    from reward_service.client import RetryPolicy, RewardServiceError

    status = client.resize(0)
    assert (status["workers"], status["ready"]) == (0, 0)
    wait_for(lambda: client.health() == "NOT_SERVING", timeout_s=30, what="health NOT_SERVING")
    with RewardClient(service.address, timeout_s=30, retry=RetryPolicy(attempts=1)) as once:
        with pytest.raises(RewardServiceError) as err:
            once.score(request(2))
    assert err.value.code is grpc.StatusCode.UNAVAILABLE and "no workers" in err.value.message
