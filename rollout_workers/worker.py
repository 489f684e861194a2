"""The rollout worker: draw targets, sample parameter sequences with the KV-cache sampler, score
them through the reward service, and return them as an Arrow trajectory batch.

One `rollout` call is one worker's share of an RL iteration:
  1. draw `num_targets` targets from the target source (seeded: the same seed gives the same
     targets), pick one structure per target (the true one, or one of the k retrieved);
  2. encode the target images once with the frozen encoder (the image tokens travel with the
     trajectories, so the learner never re-encodes);
  3. sample `samples_per_target` sequences per target in ONE batched sampler call (top-p 0.9 in
     RL), keeping per-token log-probs under the policy at temperature 1 (the behaviour log-probs
     PPO's ratio needs);
  4. send one reward request per target (its samples' tokens, executor seeds, the target PNG) in
     one `score_many` call, so the reward service scores all targets in parallel;
  5. build the `learner.trajectory` record batch.
`evaluate` scores greedy predictions on fixed targets (validation).

The scorer is anything with `score_many(requests) -> list[list[ScoreResult]]`: the gRPC
`RewardClient` in a job, an in-process `RewardWorker` in tests. Weights arrive with a version
(`set_weights`); the worker keeps the version it sampled with in every row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field

from learner.trajectory import Trajectory, to_record_batch
from policy.batching import collate
from policy.encoders import EncoderConfig, ImageEncoder
from policy.model import MaterialPolicy, PolicyConfig
from policy.sampler import Sampler, SamplingConfig
from policy.tokenizer import GraphStructure, GraphTokenizer, Vocabulary
from reward_service.api import ScoreRequest, ScoreResult
from rollout_workers.targets import Structure, Target, TargetSource


class Scorer(Protocol):
    def score_many(self, requests: Sequence[ScoreRequest], timeout_s: float | None = None
                   ) -> list[list[ScoreResult]]: ...


class RolloutConfig(BaseModel):
    """How a rollout worker samples (paper: top-p 0.9 in RL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_target: int = Field(8, ge=1, description="parameter sequences sampled per target")
    top_p: float = Field(0.9, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    device: str = Field("auto", description="auto: cuda when present")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="sampler precision on CUDA")
    reward_timeout_s: float = Field(300.0, gt=0, description="deadline of one reward call (retries included)")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads of this process")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RolloutStats:
    worker_id: str
    version: int
    trajectories: int = 0
    targets: int = 0
    failures: int = 0
    reward_mean: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"worker_id": self.worker_id, "version": self.version, "trajectories": self.trajectories,
                "targets": self.targets, "failures": self.failures, "reward_mean": self.reward_mean,
                **{f"{k}_s": v for k, v in self.seconds.items()}}


class RolloutWorker:
    """Holds a policy copy, the frozen encoder, a target source and a scorer."""

    def __init__(self, worker_id: str, policy_config: PolicyConfig | dict, encoder: ImageEncoder | EncoderConfig | dict,
                 targets: TargetSource, scorer: Scorer, config: RolloutConfig = RolloutConfig()):
        self.worker_id = worker_id
        self.config = config
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.device = resolve_device(config.device)
        if isinstance(policy_config, dict):
            policy_config = PolicyConfig.from_dict(policy_config)
        self.policy = MaterialPolicy(policy_config).to(self.device).eval()
        if not isinstance(encoder, ImageEncoder):
            encoder = (encoder if isinstance(encoder, EncoderConfig) else EncoderConfig.model_validate(encoder)).build()
        self.encoder = encoder.to(self.device)
        self.vocab = Vocabulary.from_dict(policy_config.vocab)
        self.targets = targets
        self.scorer = scorer
        self.version = -1
        self._structures: dict[str, tuple[GraphStructure, int]] = {}
        sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p, dtype=config.dtype)
        self.sampler = Sampler(self.policy, sampling)
        self.greedy = Sampler(self.policy, SamplingConfig(greedy=True, dtype=config.dtype))

    # ---- weights ------------------------------------------------------------------------------
    def set_weights(self, weights: dict[str, torch.Tensor], version: int) -> float:
        """Load policy weights in place (CUDA graphs keep reading them); returns the seconds it took."""
        start = time.perf_counter()
        if version != self.version:
            self.policy.load_state_dict(weights)
            self.version = int(version)
        return time.perf_counter() - start

    # ---- sampling -----------------------------------------------------------------------------
    def _structure(self, structure: Structure) -> GraphStructure:
        cached = self._structures.get(structure.graph_json)
        if cached is None:
            from graph_executor.ir import loads_graph

            s = GraphTokenizer(loads_graph(structure.graph_json), self.vocab).structure()
            cached = self._structures[structure.graph_json] = (s, 0)
        return cached[0]

    @torch.no_grad()
    def _encode(self, targets: Sequence[Target]) -> torch.Tensor:
        images = torch.stack([torch.from_numpy(np.ascontiguousarray(t.image)).permute(2, 0, 1) for t in targets])
        images = images.to(self.device, torch.float32) / 255.0
        return self.encoder(images).tokens

    def _sample(self, targets: Sequence[Target], structures: Sequence[Structure], seed: int, n: int, greedy: bool,
                image_tokens: torch.Tensor | None = None):
        graphs = [self._structure(s) for s in structures]
        image_tokens = self._encode(targets) if image_tokens is None else image_tokens
        batch = collate(graphs)
        sampler = self.greedy if greedy else self.sampler
        result = sampler.sample(batch, image_tokens, seed=seed, samples_per_graph=n)
        return graphs, image_tokens, result

    def _score(self, targets, structures, graphs, result, n: int, seeds: np.ndarray) -> list[list[ScoreResult]]:
        tokens = result.tokens.cpu().numpy()
        requests = []
        for g, (target, structure, graph) in enumerate(zip(targets, structures, graphs)):
            rows = tokens[g * n:(g + 1) * n, :graph.num_slots]
            requests.append(ScoreRequest(structure=structure.reward_structure, seeds=[int(s) for s in seeds[g]],
                                         target=target.png(), tokens=rows.tolist(),
                                         request_id=f"{self.worker_id}-{target.target_id}"))
        return self.scorer.score_many(requests, timeout_s=self.config.reward_timeout_s)

    def rollout(self, num_targets: int, seed: int) -> tuple[pa.RecordBatch, RolloutStats]:
        """Sample and score `num_targets` x `samples_per_target` trajectories with the current weights."""
        if self.version < 0:
            raise RuntimeError(f"rollout worker {self.worker_id} has no weights yet (call set_weights)")
        n = self.config.samples_per_target
        stats = RolloutStats(self.worker_id, self.version)
        t0 = time.perf_counter()
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1])
        targets = self.targets.draw(rng, num_targets)
        structures = [t.structures[int(rng.integers(len(t.structures)))] for t in targets]
        exec_seeds = rng.integers(0, 2**31 - 1, size=(len(targets), n))
        t1 = time.perf_counter()
        graphs, image_tokens, result = self._sample(targets, structures, int(rng.integers(2**31 - 1)), n, False)
        sampled_at = time.time()
        t2 = time.perf_counter()
        scores = self._score(targets, structures, graphs, result, n, exec_seeds)
        scored_at = time.time()
        t3 = time.perf_counter()

        tokens = result.tokens.cpu().numpy()
        logp = result.log_probs.float().cpu().numpy()
        images = image_tokens.to(torch.float16).cpu().numpy()
        trajectories = []
        for g, (target, structure, graph, results) in enumerate(zip(targets, structures, graphs, scores)):
            valid = graph.token_masks.sum(1).numpy()
            image = images[g]  # one array object per target: the batch stores its tokens once
            for j, r in enumerate(results):
                row = g * n + j
                trajectories.append(Trajectory(
                    target_id=target.target_id, target_kind=target.kind, structure_id=structure.structure_id,
                    graph_json=structure.graph_json, image_tokens=image, tokens=tokens[row, :graph.num_slots],
                    behaviour_logp=logp[row, :graph.num_slots], valid_tokens=valid, seed=int(exec_seeds[g, j]),
                    reward=r.reward, reward_terms=r.terms, ok=r.ok, failure=r.error or None,
                    policy_version=self.version, worker_id=self.worker_id, sampled_at=sampled_at,
                    scored_at=scored_at))
        batch = to_record_batch(trajectories)
        rewards = np.array([t.reward for t in trajectories])
        stats.trajectories = len(trajectories)
        stats.targets = len(targets)
        stats.failures = int(sum(not t.ok for t in trajectories))
        stats.reward_mean = float(rewards.mean()) if rewards.size else float("nan")
        stats.seconds = {"draw": t1 - t0, "sample": t2 - t1, "reward": t3 - t2, "pack": time.perf_counter() - t3}
        return batch, stats

    def evaluate(self, targets: Sequence[Target], seed: int = 0, samples: int = 0) -> dict:
        """Greedy prediction for each target with its first structure (true or top-1 retrieved);
        returns the mean reward and the per-target rewards.

        With `samples` = N > 0 it also draws N top-p sequences per target (a fixed seed, so two
        checkpoints see the same random numbers) and reports `sample_reward_mean` (the policy's
        expected reward on these targets: what PPO maximises, and on a 2-core tiny run ~4x less
        noisy from one checkpoint to the next than the greedy reward, whose argmax jumps between
        neighbouring bins of a flat distribution) and `best_of_n_mean` (top-1 of N, the paper's
        protocol).
        """
        if self.version < 0:
            raise RuntimeError(f"rollout worker {self.worker_id} has no weights yet (call set_weights)")
        structures = [t.structures[0] for t in targets]
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2])
        exec_seeds = rng.integers(0, 2**31 - 1, size=(len(targets), 1))
        graphs, image_tokens, result = self._sample(targets, structures, 0, 1, True)
        scores = self._score(targets, structures, graphs, result, 1, exec_seeds)
        rewards = [s[0].reward for s in scores]
        tokens = result.tokens.cpu().numpy()
        out = {"version": self.version, "reward_mean": float(np.mean(rewards)),
               "rewards": rewards, "target_ids": [t.target_id for t in targets],
               "structure_ids": [s.structure_id for s in structures],
               "tokens": [tokens[i, :g.num_slots].tolist() for i, g in enumerate(graphs)],
               "failures": int(sum(not s[0].ok for s in scores))}
        if samples > 0:
            sample_seeds = np.repeat(exec_seeds, samples, axis=1)  # the greedy draw's render seed
            _, _, drawn = self._sample(targets, structures, int(rng.integers(2**31 - 1)), samples, False,
                                       image_tokens)  # the targets are encoded once
            sampled = [[r.reward for r in row] for row in self._score(targets, structures, graphs, drawn,
                                                                      samples, sample_seeds)]
            out.update({"samples": samples, "sample_rewards": sampled,
                        "sample_reward_mean": float(np.mean(sampled)),
                        "best_of_n_mean": float(np.mean([max(row) for row in sampled]))})
        return out
