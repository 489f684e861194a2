"""Ray actor shell of the rollout worker (a thin shell: the work is `rollout_workers.worker`).

The shell builds its own target source and reward client from serialisable configs (it reads the
dataset or photos where it runs), takes weights tagged with a policy version (an object-store
reference resolved by Ray; the policy is a few MB), runs one rollout and hands the batch straight
to the replay buffer actor, so trajectories never pass through the driver. `put` waits while the
buffer is full (back-pressure).
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict, Field

from rollout_workers.targets import TargetsConfig, build_targets
from rollout_workers.worker import RolloutConfig, RolloutWorker


class RewardEndpoint(BaseModel):
    """Where rollout workers send reward requests (the job's own service or a running one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = "127.0.0.1:50051"
    token: str | None = Field(None, repr=False, description="the shared token itself (nodes need not share files)")
    token_file: str | None = None
    root_cert: str | None = None
    attempt_timeout_s: float | None = Field(None, gt=0)


class RolloutSpec(BaseModel):
    """Everything a rollout actor needs to build its worker."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    policy_config: dict
    encoder: dict
    targets: TargetsConfig
    validation: TargetsConfig | None = None
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardEndpoint = RewardEndpoint()


def _is_actor(handle) -> bool:
    try:
        import ray

        return isinstance(handle, ray.actor.ActorHandle)
    except ImportError:  # pragma: no cover - ray is a dependency
        return False


class RolloutWorkerShell:
    def __init__(self, worker_id: str, spec: RolloutSpec, buffer):
        from reward_service.client import RetryPolicy, RewardClient

        self.spec = spec
        endpoint = spec.reward
        self.client = RewardClient(endpoint.address, token=endpoint.token, token_file=endpoint.token_file,
                                   root_cert=endpoint.root_cert,
                                   timeout_s=spec.rollout.reward_timeout_s,
                                   attempt_timeout_s=endpoint.attempt_timeout_s,
                                   # a restarting service answers UNAVAILABLE for a while: keep trying
                                   # until the call's own deadline rather than a fixed number of times
                                   retry=RetryPolicy(attempts=1_000_000, initial_backoff_s=0.2, max_backoff_s=2.0))
        self.worker = RolloutWorker(worker_id, spec.policy_config, spec.encoder, build_targets(spec.targets),
                                    self.client, spec.rollout)
        self.buffer = buffer
        self._validation = None

    def ready(self) -> int:
        return os.getpid()

    def _put(self, batch) -> None:
        if _is_actor(self.buffer):
            import ray

            ray.get(self.buffer.put.remote(batch))
        else:
            self.buffer.put(batch)

    def rollout(self, weights: dict, version: int, num_targets: int, seed: int) -> dict:
        """Sync weights to `version`, sample and score, append to the buffer; returns timings and counts."""
        sync_s = self.worker.set_weights(weights, version)
        batch, stats = self.worker.rollout(num_targets, seed)
        start = time.perf_counter()
        self._put(batch)
        out = stats.as_dict()
        out.update({"weight_sync_s": sync_s, "buffer_put_s": time.perf_counter() - start, "bytes": batch.nbytes,
                    "pid": os.getpid()})
        return out

    def evaluate(self, weights: dict, version: int, num_targets: int, seed: int = 0, samples: int = 0) -> dict:
        """Greedy (and with `samples`, sampled) validation on the fixed validation targets."""
        if self._validation is None:
            self._validation = build_targets(self.spec.validation or self.spec.targets)
        self.worker.set_weights(weights, version)
        return self.worker.evaluate(self._validation.fixed(num_targets), seed, samples)

    def close(self) -> None:
        self.client.close()
