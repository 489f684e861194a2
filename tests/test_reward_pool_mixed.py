"""A pool that mixes CPU and GPU reward workers: GPU workers take big tasks, resizes touch CPU workers.

Real Ray actors behind a real gRPC server on 127.0.0.1. The "GPU" worker runs with
`gpu_device="cpu"` (the same worker kind, reserving no GPU), so dispatch is exercised on this box;
`-m gpu` tests on a CUDA host cover the device itself (tests/test_reward_gpu.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from reward_service.client import RewardClient
from reward_service.config import MetricConfig, RewardConfig
from reward_service.pool import InsufficientResources, PoolConfig, RewardPool
from reward_service.server import BackgroundServer, ServerConfig
from reward_service.worker import RewardWorker, ScoreRequest
from tests.service_helpers import local_ray_service

REWARD = RewardConfig(res=64, metric=MetricConfig(image_res=64))
GRAPH = json.dumps({"format": "matrl.graph/1", "name": "mixed", "nodes": {
    "noise": {"type": "perlin_fbm", "params": {"scale": 4}},
    "cells": {"type": "worley", "params": {"scale": 5}},
    "mix": {"type": "blend", "inputs": {"foreground": "noise", "background": "cells.f2_f1"}},
    "out": {"type": "output", "inputs": {"basecolor": "mix", "height": "noise"}}}})
TARGET = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)  # PNG on the wire: lossless
CPU_TASK, GPU_TASK = 8, 48


def request(n: int) -> ScoreRequest:
    return ScoreRequest(structure=GRAPH, seeds=list(range(n)), target=TARGET,
                        param_sets=[{"noise": {"persistence": 0.1 + 0.8 * (i % 17) / 17},
                                     "cells": {"scale": 3 + i % 5}, "mix": {"mode": ("multiply", "screen")[i % 2]}}
                                    for i in range(n)])


@pytest.fixture(scope="module")
def service():
    with local_ray_service() as start:
        pool = RewardPool(REWARD, PoolConfig(workers=1, gpu_workers=1, gpu_device="cpu", gpu_task_samples=GPU_TASK,
                                             gpu_overrides={"micro_batch": 16}))
        server = BackgroundServer(pool, ServerConfig(port=0, chunk_samples=CPU_TASK))
        yield start(server)


def test_gpu_workers_take_big_tasks_and_results_equal_one_worker(service):
    stats_before = service.run(service.pool.worker_stats())
    with RewardClient(service.address, timeout_s=300) as client:
        assert (client.pool_status()["workers"], client.pool_status()["ready"]) == (2, 2)
        results = client.score(request(80))
    stats = service.run(service.pool.worker_stats())
    kinds = [s.gpu for s in service.pool.slots]
    assert kinds == [False, True]
    samples = [after["samples"] - before["samples"] for before, after in zip(stats_before, stats)]
    tasks = [after["requests"] - before["requests"] for before, after in zip(stats_before, stats)]
    # free workers take the next slice in turn: CPU 8, GPU 48, CPU 8, GPU the last 16
    assert samples == [2 * CPU_TASK, 80 - 2 * CPU_TASK] and tasks == [2, 2]
    assert all(slot.rate > 0 for slot in service.pool.slots)  # measured: mixed dispatch now goes by rate
    reference = RewardWorker(REWARD).score(request(80))
    assert all(r.ok for r in results)
    assert [r.reward for r in results] == pytest.approx([r.reward for r in reference], abs=1e-5)


def test_resizes_count_cpu_workers_beside_the_gpu_workers(service):
    pool = service.pool
    assert pool.size == 1 and pool.size_limit() == 1  # 2 CPUs, one taken by the GPU worker
    with pytest.raises(InsufficientResources, match="room for 1"):
        pool.check_size(2)
    service.run(pool.resize(1))
    assert [s.gpu for s in pool.slots] == [False, True]


def test_gpu_worker_config_is_the_pool_config_with_its_device_and_overrides():
    pool = RewardPool(REWARD, PoolConfig(gpu_device="cuda:1", gpu_overrides={"compile": True, "micro_batch": 512}))
    assert (pool.gpu_reward_config.device, pool.gpu_reward_config.compile) == ("cuda:1", True)
    assert pool.gpu_reward_config.samples_per_call == 512 and pool.gpu_reward_config.res == REWARD.res
    with pytest.raises(ValidationError, match="gpu_device"):
        PoolConfig(gpu_overrides={"device": "cuda"})
    with pytest.raises(ValidationError, match="no_such_field"):
        RewardPool(REWARD, PoolConfig(gpu_overrides={"no_such_field": 1}))


def _slots(pool: RewardPool, *specs):
    """Fake READY slots (no actors): (gpu, rate in samples/s, tasks in flight, mean task size)."""
    from reward_service.pool import SlotState, WorkerSlot
    pool.slots = [WorkerSlot(f"w{i}", None, SlotState.READY, in_flight=k, gpu=gpu, rate=rate, task_samples=size)
                  for i, (gpu, rate, k, size) in enumerate(specs)]
    return pool.slots


def test_mixed_pools_send_a_task_to_the_worker_that_finishes_it_first():
    """A target's 8 samples: ~1 s on an idle CPU worker at 8 samples/s, ~0.03 s behind 7 queued tasks
    on a GPU worker at 2,000 samples/s — the GPU worker takes it, and a full GPU worker is waited
    for, not replaced by a CPU worker that would finish later. Big requests still go to an idle CPU
    worker when the GPU worker's queue would take longer than the CPU worker's slice."""
    pool = RewardPool(REWARD, PoolConfig(workers=2, gpu_workers=1, gpu_task_samples=4096, gpu_max_in_flight=8))
    cpu_a, cpu_b, gpu = _slots(pool, (False, 8.0, 0, 8), (False, 8.0, 0, 8), (True, 2000.0, 7, 8))
    assert pool._pick(8) is gpu
    gpu.in_flight = 8
    assert pool._pick(8) is None  # full: wait for it (_acquire waits for a change)
    gpu.in_flight, gpu.task_samples = 2, 4096  # two big tasks queued: ~4 s
    assert pool._pick(10_000, cpu_task=8) is cpu_a  # 8 rows in 1 s beat 4 s + 2 s
    cpu_a.in_flight = 2
    assert pool._pick(10_000, cpu_task=8) is cpu_b


def test_pools_without_gpu_workers_or_rates_keep_least_in_flight_dispatch():
    pool = RewardPool(REWARD, PoolConfig(workers=2))
    first, second = _slots(pool, (False, 0.0, 1, 0), (False, 0.0, 0, 0))
    assert pool._pick(8) is second
    second.in_flight = 2
    assert pool._pick(8) is first
    first.in_flight = 2
    assert pool._pick(8) is None
    mixed = RewardPool(REWARD, PoolConfig(workers=1, gpu_workers=1))
    cpu, gpu = _slots(mixed, (False, 0.0, 0, 0), (True, 5000.0, 1, 8))  # the CPU worker is not measured yet
    assert mixed._pick(8) is cpu


def test_a_returned_task_updates_its_workers_rate():
    pool = RewardPool(REWARD, PoolConfig(workers=1))
    (slot,) = _slots(pool, (False, 0.0, 1, 0))
    import time as _time
    sent = _time.monotonic() - 0.5
    pool._measured(slot, 8, sent)
    assert 8 / 0.6 < slot.rate < 8 / 0.45 and slot.task_samples == 8
    pool._measured(slot, 8, sent)  # queued behind the first: its service time starts at the first's return
    assert slot.rate > 8 / 0.45
