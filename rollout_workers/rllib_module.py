"""`MaterialPolicy` as RLlib RLModules (new API stack), for the environments of `rollout_workers.gym_env`.

`MaterialRLModule` (for `MaterialParamEnv`, the whole parameter sequence as one action):
  * exploration: the KV-cache sampler (`policy.sampler.Sampler`, top-p as in matrl's rollouts)
    draws the sequence for every row of the batch; the module returns it as ACTIONS, its
    log-probability under the policy (temperature 1, the convention matrl's PPO uses: the sum over
    the structure's slots) as ACTION_LOGP, and the teacher-forced masked logits of the drawn
    sequence as ACTION_DIST_INPUTS (RLlib's PPO loss builds the behaviour distribution from them;
    ACTION_LOGP is computed from the same logits, so the first PPO ratio is exactly 1);
  * inference: greedy decoding (argmax at every slot), as matrl's validation does;
  * train: the teacher-forced logits of the taken sequence; `SlotSequenceDistribution` turns them
    into log p(sequence) = sum over slots of log p(token_i | tokens_<i), entropy and KL (sums over
    slots). Padded slots admit only token 0, so they add 0;
  * values: `ValueNetwork.from_policy` (the policy's trunk and a fresh scalar head, as matrl's
    learner initialises its value network) read at the first slot: V(target, structure).
    It is left out of the inference-only copies on EnvRunners (`InferenceOnlyAPI`).

`MaterialTokenRLModule` (for `MaterialTokenEnv`, one token per step): the policy run by teacher
forcing on the prefix in the observation, read at the current slot (one forward per environment
step: there is no KV cache across RLlib steps); ACTIONS drawn with matrl's per-step draw
(`policy.sampler.choose`, same top-p) and ACTION_LOGP under the temperature-1 policy; values from
the ValueNetwork at the current slot.

model_config keys (a dict, as RLlib passes it):
  init        policy checkpoint directory (`policy.checkpoint`), or
  policy      PolicyConfig dict (random weights; the learner's weights reach the EnvRunners anyway)
  structures  graph JSON of every structure, in the order of the environment's structure table
              (`rollout_workers.gym_env.structure_table`)
  top_p, temperature   exploration sampling (matrl: 0.9, 1.0)
  torch_threads        intra-op threads of the process building the module (None: leave as is)
Batches are padded to the structure table's node and slot counts, so the sampler always sees the
same shapes (its CUDA graphs are captured once per batch size).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import (
    TorchCategorical,
    TorchDeterministic,
    TorchDistribution,
)
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from policy.batching import PolicyBatch, collate
from policy.model import MaterialPolicy, PolicyConfig, ValueNetwork
from policy.sampler import Sampler, SamplingConfig, choose
from policy.tokenizer import VALUE_BINS, GraphTokenizer, Vocabulary


class SlotSequenceDistribution(TorchDistribution):
    """A parameter sequence's distribution given its teacher-forced logits (B, S * 128).

    log p, entropy and KL are sums over the S slots of per-slot categoricals. This is exact for
    the sequence whose tokens produced the logits (teacher forcing conditions slot i on tokens
    < i), which is how the PPO loss uses it. `sample()` draws the slots independently from
    those logits, which is NOT the autoregressive policy: the RLModules return their own actions
    (KV-cache sampler), so RLlib never samples from this distribution.
    """

    def __init__(self, logits: torch.Tensor):
        super().__init__(logits=logits)

    def _get_torch_distribution(self, logits: torch.Tensor) -> torch.distributions.Distribution:
        logits = logits.reshape(*logits.shape[:-1], -1, VALUE_BINS).float()
        return torch.distributions.Independent(torch.distributions.Categorical(logits=logits), 1)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs) -> "SlotSequenceDistribution":
        return cls(logits=logits)

    @staticmethod
    def required_input_dim(space, **kwargs) -> int:
        return int(np.sum(space.nvec))

    def to_deterministic(self) -> TorchDeterministic:
        return TorchDeterministic(loc=self._dist.base_dist.logits.argmax(-1))


def _select(batch: PolicyBatch, index: torch.Tensor) -> PolicyBatch:
    return PolicyBatch(**{f.name: getattr(batch, f.name).index_select(0, index) for f in fields(batch)
                          if getattr(batch, f.name) is not None})


def _first_slots(batch: PolicyBatch, length: int) -> PolicyBatch:
    """The batch cut to its first `length` slots (teacher forcing at slot t sees slots <= t only)."""
    cut = {name: getattr(batch, name)[:, :length] for name in ("slot_node", "slot_param", "slot_component",
                                                               "slot_mask", "token_masks")}
    if batch.tokens is not None:
        cut["tokens"] = batch.tokens[:, :length]
    return PolicyBatch(**{**{f.name: getattr(batch, f.name) for f in fields(batch)}, **cut})


class _MaterialModuleBase(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """Policy, value network and the padded structure table shared by both formulations."""

    def setup(self) -> None:
        config: dict[str, Any] = dict(self.model_config or {})
        if config.get("torch_threads"):
            torch.set_num_threads(int(config["torch_threads"]))
        if config.get("init"):
            from policy.checkpoint import load_policy

            self.policy, _ = load_policy(config["init"])
        elif config.get("policy"):
            self.policy = MaterialPolicy(PolicyConfig.from_dict(config["policy"]))
        else:
            raise ValueError("model_config needs 'init' (a policy checkpoint) or 'policy' (a PolicyConfig dict)")
        if not config.get("structures"):
            raise ValueError("model_config needs 'structures': the graph JSON of the environment's structure table")
        from graph_executor.ir import loads_graph

        vocab = Vocabulary.from_dict(self.policy.config.vocab)
        structures = [GraphTokenizer(loads_graph(j), vocab).structure() for j in config["structures"]]
        self._table = collate(structures)  # padded to the table's node and slot counts
        self.max_slots = self._table.num_slots
        self._check_spaces(len(structures))
        self.sampling = SamplingConfig(top_p=float(config.get("top_p", 1.0)),
                                       temperature=float(config.get("temperature", 1.0)))
        self.sampler = Sampler(self.policy, self.sampling)
        self.greedy = Sampler(self.policy, SamplingConfig(greedy=True))
        if not self.inference_only:
            self.value = ValueNetwork.from_policy(self.policy)

    def _check_spaces(self, num_structures: int) -> None:
        structure = self.observation_space["structure"]
        if structure.n != num_structures:
            raise ValueError(f"the environment has {structure.n} structures, model_config['structures'] "
                             f"{num_structures}: both must come from the same structure table")

    def get_non_inference_attributes(self) -> list[str]:
        return ["value"]

    def _structures(self, index: torch.Tensor) -> PolicyBatch:
        device = next(self.policy.parameters()).device
        if self._table.slot_mask.device != device:
            self._table = self._table.to(device)
        return _select(self._table, index.to(device).long().reshape(-1))

    @staticmethod
    def _image(obs: dict) -> torch.Tensor:
        return obs["image_tokens"].float()

    @staticmethod
    def _seed() -> int:
        """The sampler's seed, from torch's generator (RLlib seeds it per EnvRunner)."""
        return int(torch.randint(0, 2**31 - 1, (1,)))


class MaterialRLModule(_MaterialModuleBase):
    """The whole parameter sequence as one action (for `MaterialParamEnv`)."""

    def setup(self) -> None:
        super().setup()
        self.action_dist_cls = SlotSequenceDistribution

    def _check_spaces(self, num_structures: int) -> None:
        super()._check_spaces(num_structures)
        if tuple(self.action_space.shape) != (self.max_slots,):
            raise ValueError(f"action space of shape {self.action_space.shape}, but the structure table has "
                             f"{self.max_slots} slots at most")

    def _teacher_forced(self, structures: PolicyBatch, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long().to(structures.slot_mask.device) * structures.slot_mask  # padded slots: token 0
        return self.policy(structures.with_tokens(tokens), image)

    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        obs = batch[Columns.OBS]
        with torch.no_grad():
            structures, image = self._structures(obs["structure"]), self._image(obs)
            tokens = self.sampler.sample(structures, image, seed=self._seed()).tokens
            logits = self._teacher_forced(structures, tokens, image).flatten(1)
            logp = SlotSequenceDistribution(logits).logp(tokens)
        return {Columns.ACTIONS: tokens, Columns.ACTION_LOGP: logp, Columns.ACTION_DIST_INPUTS: logits}

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        obs = batch[Columns.OBS]
        with torch.no_grad():
            structures = self._structures(obs["structure"])
            tokens = self.greedy.sample(structures, self._image(obs), seed=0).tokens
        return {Columns.ACTIONS: tokens}

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        obs = batch[Columns.OBS]
        structures = self._structures(obs["structure"])
        logits = self._teacher_forced(structures, batch[Columns.ACTIONS], self._image(obs))
        return {Columns.ACTION_DIST_INPUTS: logits.flatten(1)}

    def compute_values(self, batch: dict, embeddings: Any = None) -> torch.Tensor:
        obs = batch[Columns.OBS]
        first = _first_slots(self._structures(obs["structure"]), 1)
        tokens = torch.zeros_like(first.slot_node)
        return self.value(first.with_tokens(tokens), self._image(obs))[:, 0]


class MaterialTokenRLModule(_MaterialModuleBase):
    """One value token per step (for `MaterialTokenEnv`): the policy re-run on the prefix each step."""

    def setup(self) -> None:
        super().setup()
        self.action_dist_cls = TorchCategorical

    def _check_spaces(self, num_structures: int) -> None:
        super()._check_spaces(num_structures)
        if tuple(self.observation_space["prefix"].shape) != (self.max_slots,):
            raise ValueError(f"prefix of shape {self.observation_space['prefix'].shape}, but the structure table "
                             f"has {self.max_slots} slots at most")

    def _prefix_batch(self, obs: dict) -> tuple[PolicyBatch, torch.Tensor]:
        structures = self._structures(obs["structure"])
        step = obs["step"].long().reshape(-1).to(structures.slot_mask.device)
        length = int(step.max()) + 1
        prefix = obs["prefix"].long().to(step.device)[:, :length]
        prefix = torch.where(prefix >= VALUE_BINS, torch.zeros_like(prefix), prefix)  # not chosen yet -> 0
        cut = _first_slots(structures, length)
        return cut.with_tokens(prefix * cut.slot_mask), step

    def _step_logits(self, obs: dict) -> torch.Tensor:
        batch, step = self._prefix_batch(obs)
        logits = self.policy(batch, self._image(obs))
        return logits[torch.arange(logits.shape[0], device=logits.device), step]

    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        with torch.no_grad():
            logits = self._step_logits(batch[Columns.OBS])
            uniforms = 1.0 - torch.rand(logits.shape[0], device=logits.device)
            token, logp, _ = choose(logits, uniforms, self.sampling)
        return {Columns.ACTIONS: token, Columns.ACTION_LOGP: logp, Columns.ACTION_DIST_INPUTS: logits}

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        with torch.no_grad():
            logits = self._step_logits(batch[Columns.OBS])
        return {Columns.ACTIONS: logits.argmax(-1), Columns.ACTION_DIST_INPUTS: logits}

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        return {Columns.ACTION_DIST_INPUTS: self._step_logits(batch[Columns.OBS])}

    def compute_values(self, batch: dict, embeddings: Any = None) -> torch.Tensor:
        obs = batch[Columns.OBS]
        prefix, step = self._prefix_batch(obs)
        values = self.value(prefix, self._image(obs))
        return values[torch.arange(values.shape[0], device=values.device), step]


__all__ = ["MaterialRLModule", "MaterialTokenRLModule", "SlotSequenceDistribution"]
