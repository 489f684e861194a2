"""The reward worker on a GPU scores like the CPU worker (gpu marker; run with `-m gpu` on a CUDA host).

Requests are token rows of sampled parameters of the median library graph (what rollout workers
send), with bad rows mixed in; the CPU worker in float32 is the reference. Tolerances are the
measured precision of each setting (benchmarks/reward_precision.py: TF32 convolutions move rewards
by at most 5.5e-4, bfloat16 by 6.4e-3) plus the executor's CPU/GPU differences (dense vs two-tap
lattice noise, cuDNN vs oneDNN), well under 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_executor.executor import Plan
from graph_executor.library import load_library_graph
from graph_executor.render import render_flash
from graph_executor.sampling import sample_parameters
from policy.tokenizer import GraphTokenizer
from reward_service.api import ScoreRequest
from reward_service.config import RewardConfig
from reward_service.worker import RewardWorker

pytestmark = pytest.mark.gpu
GRAPH = "brown_leather"  # the median library graph (benchmarks/executor.py)
RES = 128


@pytest.fixture(scope="module")
def request_and_reference():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    graph = load_library_graph(GRAPH)
    tokenizer = GraphTokenizer(graph)
    tokens = [tokenizer.tokenize(s) for s in sample_parameters(graph, 40, 7)]
    tokens[3] = tokens[3][:-2]  # wrong length
    tokens[5] = [t + 1000 for t in tokens[5]]  # invalid tokens
    plan = Plan(graph)
    target = render_flash(plan.run(plan.stack(), res=RES))[0].permute(1, 2, 0).numpy()
    request = ScoreRequest(f"lib:{GRAPH}", list(range(len(tokens))), (target * 255 + 0.5).astype(np.uint8),
                           tokens=tokens)
    return request, RewardWorker(RewardConfig(res=RES)).score(request)


@pytest.mark.parametrize("config, tolerance", [
    ({"tf32": False}, 2e-3),
    ({}, 2e-3),  # TF32 convolutions, the GPU default
    ({"cnn_autocast": "bfloat16"}, 1.5e-2),
    ({"micro_batch": 7}, 2e-3),  # several calls per request, the last one short
])
def test_gpu_rewards_equal_cpu_rewards(request_and_reference, config, tolerance):
    request, reference = request_and_reference
    results = RewardWorker(RewardConfig(res=RES, device="cuda", **config)).score(request)
    assert [r.ok for r in results] == [r.ok for r in reference]
    assert [r.error for r in results] == [r.error for r in reference]
    assert sum(r.ok for r in results) == len(results) - 2
    assert [r.reward for r in results] == pytest.approx([r.reward for r in reference], abs=tolerance)
    assert {"decode", "validate", "execute", "render", "cnn", "terms"} <= set(results[0].timings)
    phases = sum(results[0].timings[k] for k in ("decode", "validate", "execute", "render", "cnn", "terms"))
    assert phases <= results[0].timings["total"] * 1.01  # CUDA-event phases fit in the wall time


def test_compiled_gpu_worker_equals_cpu_rewards(request_and_reference):
    """torch.compile'd executor and renderer, chunks padded to powers of two (compiles for minutes)."""
    request, reference = request_and_reference
    results = RewardWorker(RewardConfig(res=RES, device="cuda", compile=True, micro_batch=32)).score(request)
    assert [r.ok for r in results] == [r.ok for r in reference]
    assert [r.reward for r in results] == pytest.approx([r.reward for r in reference], abs=2e-3)
