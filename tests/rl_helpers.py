"""Shared pieces of the RL tests: a tiny policy, targets rendered from two small library graphs, and
an in-process reward worker at 64²."""

from __future__ import annotations

import functools

import torch

from graph_executor.library import load_library_graph
from policy.encoders import EncoderConfig
from policy.model import MaterialPolicy, PolicyConfig
from policy.tokenizer import Vocabulary

GRAPHS = ("red_plastic", "brushed_steel")
TINY = dict(node_dim=16, node_layers=1, node_heads=2, dim=32, layers=1, heads=2, mlp_ratio=2, max_slots=256)


@functools.lru_cache(maxsize=1)
def encoder():
    return EncoderConfig().build()


def tiny_policy(seed: int = 0) -> MaterialPolicy:
    torch.manual_seed(seed)
    return MaterialPolicy(PolicyConfig.for_encoder(encoder(), Vocabulary.from_registry(), **TINY))


def graphs():
    return {name: load_library_graph(name) for name in GRAPHS}


@functools.lru_cache(maxsize=1)
def reward_worker():
    from reward_service.config import RewardConfig
    from reward_service.worker import RewardWorker

    return RewardWorker(RewardConfig(res=64))


def rollout_worker(policy: MaterialPolicy, samples_per_target: int = 4, worker_id: str = "w0"):
    from rollout_workers.targets import RenderedTargets
    from rollout_workers.worker import RolloutConfig, RolloutWorker

    worker = RolloutWorker(worker_id, policy.config, encoder(), RenderedTargets(graphs(), res=64), reward_worker(),
                           RolloutConfig(samples_per_target=samples_per_target, device="cpu"))
    worker.set_weights(policy.state_dict(), 0)
    return worker
