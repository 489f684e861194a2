"""The material-parameter task as Gymnasium environments, for RLlib or any Gymnasium RL library.

Two formulations of the same task (same targets, same reward service, same tokenizer):

* `MaterialParamEnv` (id ``matrl/MaterialParam-v0``): one episode = one target image and one graph
  structure; ONE action = the whole parameter sequence (``MultiDiscrete([128] * max_slots)``, one
  value token per slot of the structure, the tail beyond its slots ignored); the episode ends after
  that step with the appearance reward. This is how an RLlib user would pose an autoregressive
  generator: the RLModule samples the sequence itself (`rollout_workers.rllib_module`), and PPO
  sees one action per episode.
* `MaterialTokenEnv` (id ``matrl/MaterialToken-v0``): one step = one value token
  (``Discrete(128)``); the observation carries the prefix chosen so far; the reward (0 before)
  comes at the last slot. The textbook formulation, kept for reference: a step per token costs an
  environment step, a connector pass and a policy forward each.

Observation (a ``Dict``), what the policy needs and nothing it would have to recompute:
  * ``image_tokens`` (T, C) float32: the target encoded once per target by the frozen image
    encoder the policy was trained with (EfficientNet-Lite0: 49 x 1280, values in [0, 6] after its
    ReLU6); the environment holds the encoder (one per process, shared by a vector env's copies;
    on the GPU with ``device: auto`` inside a GPU EnvRunner), so a learner never re-encodes images;
  * ``structure``: index of the target's graph structure in `structure_table(targets)`, the fixed,
    sorted list of structures the target source can produce (an RLModule builds the same table);
  * ``action_mask`` int8: 1 where a value token is admitted (ints, bools and enums admit fewer
    than 128 tokens; padded slots admit only token 0): (max_slots, 128) for the sequence
    formulation, (128,) for the current slot in the token formulation;
  * token formulation only: ``prefix`` (max_slots,) with the tokens chosen so far (128 = not yet)
    and ``step``, the slot to fill now.

A token a slot does not admit (an algorithm that ignores ``action_mask``) is replaced by the
nearest admitted token and counted in ``info["invalid_tokens"]``, so every action can be scored.

Targets come from `rollout_workers.targets.build_targets` (`TargetsConfig`), drawn with the
environment's seeded ``np_random``; with ``samples_per_target = k`` a target is kept for k
consecutive episodes (what matrl's rollout workers do with N samples per target: the encoder and
the reward service's target cache then work once per target). Scoring goes through the gRPC
reward service (`reward_service.client.RewardClient`), one request per finished sequence; the
executor seed of each sample is drawn from ``np_random`` as well, so a seeded episode is
reproducible (Gymnasium's `check_env` checks it).

`MaterialParamVectorEnv` is the sequence formulation's native vector env (Gymnasium's
``vector_entry_point``; RLlib ``gym_env_vectorize_mode="vector_entry_point"``): groups of k copies
share a target within one step and a step sends one reward call for all of them, as matrl's
rollout workers batch their requests.

Construction: ``MaterialParamEnv(config)`` with a `MaterialEnvConfig` or a dict of its fields
(RLlib passes ``env_config`` as such a dict), or keyword arguments (``gymnasium.make(id, **kw)``).
In another process ``gymnasium.make("rollout_workers.gym_env:matrl/MaterialParam-v0", ...)``
imports this module (and so registers the ids) first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field

from policy.tokenizer import VALUE_BINS, GraphStructure, GraphTokenizer, Vocabulary
from reward_service.api import ScoreRequest
from rollout_workers.targets import Structure, Target, TargetsConfig, build_targets

PARAM_ENV_ID = "matrl/MaterialParam-v0"
TOKEN_ENV_ID = "matrl/MaterialToken-v0"
NOT_YET = VALUE_BINS  # prefix value of a slot not chosen yet (token env)


class MaterialEnvConfig(BaseModel):
    """What a material environment needs; serialisable, so RLlib's env runners build their own."""

    model_config = ConfigDict(extra="forbid")

    reward_address: str = Field("127.0.0.1:50051", description="gRPC reward service HOST:PORT")
    token_file: str | None = Field(None, description="shared token of the reward service")
    reward_timeout_s: float = Field(300.0, gt=0, description="deadline of one reward call (retries included)")
    targets: TargetsConfig = TargetsConfig()
    vocab: dict | None = Field(None, description="the policy's Vocabulary.to_dict() (None: the node registry's)")
    encoder: dict = Field(default_factory=dict, description="EncoderConfig of the policy's image encoder")
    samples_per_target: int = Field(1, ge=1, description="consecutive episodes that share one target")
    torch_threads: int | None = Field(1, ge=1, description="intra-op threads for the encoder (None: torch's)")
    device: str = Field("cpu", description="where the encoder runs: cpu, cuda, or auto (cuda when visible, e.g. "
                                           "inside an EnvRunner that holds a GPU)")


@dataclass(frozen=True)
class TableEntry:
    structure: Structure
    tokens: GraphStructure
    project: np.ndarray  # (num_slots, 128) int64: a token -> the nearest token its slot admits


def structure_table(targets: TargetsConfig) -> list[Structure]:
    """Every structure the target source of `targets` can produce, sorted by id (no rendering).

    Render targets: the named library graphs (or the whole library); dataset targets: the
    dataset's graphs; real photos: the library (retrieval picks from it).
    """
    from graph_executor.library import library_graphs, load_library_graph
    from rollout_workers.targets import _library_names, _structure

    names = _library_names()
    graphs: dict = {}
    if targets.real_fraction < 1:
        syn = targets.synthetic
        if syn.source == "dataset":
            from learner.dataset import load_graphs

            graphs.update(load_graphs(syn.dataset))
        elif syn.graphs:
            graphs.update({name: load_library_graph(name) for name in syn.graphs})
        else:
            graphs.update(library_graphs())
    if targets.real_fraction > 0:
        graphs.update({k: v for k, v in library_graphs().items() if k not in graphs})
    return [_structure(gid, graphs[gid], names) for gid in sorted(graphs)]


def projection(token_masks: torch.Tensor) -> np.ndarray:
    """(S, 128) bool masks -> (S, 128) table of the admitted token nearest to each token."""
    masks = token_masks.numpy()
    tokens = np.arange(VALUE_BINS)
    out = np.empty(masks.shape, dtype=np.int64)
    for i, row in enumerate(masks):
        valid = np.flatnonzero(row)
        out[i] = valid[np.abs(valid[None, :] - tokens[:, None]).argmin(1)]
    return out


def build_table(structures: list[Structure], vocab: Vocabulary) -> list[TableEntry]:
    from graph_executor.ir import loads_graph

    table = []
    for s in structures:
        tokens = GraphTokenizer(loads_graph(s.graph_json), vocab).structure()
        if tokens.num_slots == 0:
            raise ValueError(f"structure {s.structure_id!r} has no predicted parameter: nothing to act on")
        table.append(TableEntry(s, tokens, projection(tokens.token_masks)))
    return table


@functools.lru_cache(maxsize=4)
def shared_encoder(config_json: str, device: str = "cpu"):
    """One frozen encoder per process, config and device: the environments of a vector env share it
    (it is only read, under no_grad), instead of one ~19 MB copy each."""
    from policy.encoders import EncoderConfig

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return EncoderConfig.model_validate_json(config_json).build().to(device)


class _MaterialEnvBase(gym.Env):
    """Targets, encoder, structure table and reward client shared by both formulations."""

    metadata = {"render_modes": []}

    def __init__(self, config: MaterialEnvConfig | Mapping[str, Any] | None = None, **kwargs: Any):
        from policy.encoders import EncoderConfig
        from reward_service.client import RewardClient

        if isinstance(config, MaterialEnvConfig):
            config = config.model_copy(update=kwargs) if kwargs else config
        else:
            config = MaterialEnvConfig.model_validate({**dict(config or {}), **kwargs})
        self.config = config
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.vocab = Vocabulary.from_dict(config.vocab) if config.vocab else Vocabulary.from_registry()
        self.table = build_table(structure_table(config.targets), self.vocab)
        self._index = {e.structure.structure_id: i for i, e in enumerate(self.table)}
        self.max_slots = max(e.tokens.num_slots for e in self.table)
        self.encoder = shared_encoder(EncoderConfig.model_validate(config.encoder).model_dump_json(), config.device)
        self._device = next(self.encoder.parameters()).device
        self.targets = build_targets(config.targets)
        self.client = RewardClient(config.reward_address, token_file=config.token_file,
                                   timeout_s=config.reward_timeout_s)
        low, high = getattr(self.encoder, "token_range", (-np.inf, np.inf))
        self._image_space = spaces.Box(low, high, (self.encoder.num_tokens, self.encoder.token_dim), np.float32)
        self._episodes_on_target = 0
        self._target: Target | None = None
        self._png: bytes = b""
        self._image_tokens: np.ndarray | None = None
        self._entry: TableEntry | None = None
        self._structure_index = 0

    # ---- targets --------------------------------------------------------------------------------
    def _draw_target(self) -> tuple[Target, int]:
        """A target and the index of the structure chosen for it, drawn with `np_random`."""
        target = self.targets.draw(self.np_random, 1)[0]
        structure = target.structures[int(self.np_random.integers(len(target.structures)))]
        if structure.structure_id not in self._index:
            raise ValueError(f"target {target.target_id}: structure {structure.structure_id!r} is not in the "
                             "environment's structure table")
        return target, self._index[structure.structure_id]

    @torch.no_grad()
    def _encode(self, targets: list[Target]) -> np.ndarray:
        """(N, T, C) float32 image tokens of the targets, one encoder call."""
        images = torch.stack([torch.from_numpy(np.ascontiguousarray(t.image)).permute(2, 0, 1) for t in targets])
        return self.encoder(images.to(self._device, torch.float32) / 255).tokens.float().cpu().numpy()

    def _install(self, target: Target, structure_index: int, image_tokens: np.ndarray, png: bytes) -> None:
        self._target = target
        self._structure_index = structure_index
        self._entry = self.table[structure_index]
        self._image_tokens = image_tokens
        self._png = png
        self._episodes_on_target = 0

    def _next_target(self, reseeded: bool) -> None:
        """A new target every `samples_per_target` episodes (and after every explicit seed)."""
        if reseeded or self._target is None or self._episodes_on_target >= self.config.samples_per_target:
            target, index = self._draw_target()
            self._install(target, index, self._encode([target])[0], target.png())
        self._episodes_on_target += 1

    def _request(self, tokens: np.ndarray) -> tuple[ScoreRequest, int]:
        """The reward request for one finished sequence, with its executor seed drawn from `np_random`."""
        seed = int(self.np_random.integers(0, 2**31 - 1))
        return ScoreRequest(structure=self._entry.structure.reward_structure, seeds=[seed], target=self._png,
                            tokens=[tokens.tolist()], request_id=f"gym-{self._target.target_id}"), seed

    def _outcome(self, result, seed: int) -> tuple[float, dict]:
        info = {"ok": result.ok, "reward_terms": dict(result.terms), "target_id": self._target.target_id,
                "structure_id": self._entry.structure.structure_id, "seed": seed}
        if result.error:
            info["error"] = result.error
        return float(result.reward), info

    def _score(self, tokens: np.ndarray) -> tuple[float, dict]:
        request, seed = self._request(tokens)
        result = self.client.score_many([request], timeout_s=self.config.reward_timeout_s)[0][0]
        return self._outcome(result, seed)

    def _project(self, slots: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, int]:
        tokens = np.clip(np.asarray(tokens, dtype=np.int64), 0, VALUE_BINS - 1)
        fixed = self._entry.project[slots, tokens]
        return fixed, int((fixed != tokens).sum())

    @property
    def structures(self) -> list[Structure]:
        """The structure table (the ``structure`` observation indexes it)."""
        return [e.structure for e in self.table]

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()


class MaterialParamEnv(_MaterialEnvBase):
    """One target per episode, the whole parameter sequence as one action (episode length 1)."""

    def __init__(self, config: MaterialEnvConfig | Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.observation_space = spaces.Dict({
            "image_tokens": self._image_space,
            "structure": spaces.Discrete(len(self.table)),
            "action_mask": spaces.Box(0, 1, (self.max_slots, VALUE_BINS), np.int8),
        })
        self.action_space = spaces.MultiDiscrete(np.full(self.max_slots, VALUE_BINS, dtype=np.int64))
        self._masks = []
        for entry in self.table:
            mask = np.zeros((self.max_slots, VALUE_BINS), dtype=np.int8)
            mask[:, 0] = 1
            mask[:entry.tokens.num_slots] = entry.tokens.token_masks.numpy()
            self._masks.append(mask)

    def _obs(self) -> dict:
        return {"image_tokens": self._image_tokens, "structure": self._structure_index,
                "action_mask": self._masks[self._structure_index]}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._next_target(reseeded=seed is not None)
        return self._obs(), self._reset_info()

    def _reset_info(self) -> dict:
        return {"target_id": self._target.target_id, "structure_id": self._entry.structure.structure_id}

    def _tokens(self, action) -> tuple[np.ndarray, int]:
        """The structure's tokens of an action (inadmissible ones projected) and how many were."""
        if self._target is None:
            raise RuntimeError("step() before reset()")
        action = np.asarray(action)
        if action.shape != (self.max_slots,):
            raise ValueError(f"action of shape {action.shape}; this environment takes ({self.max_slots},) "
                             "value tokens (the whole parameter sequence)")
        n = self._entry.tokens.num_slots
        return self._project(np.arange(n), action[:n])

    def step(self, action):
        tokens, invalid = self._tokens(action)
        reward, info = self._score(tokens)
        info["invalid_tokens"] = invalid
        return self._obs(), reward, True, False, info


class MaterialParamVectorEnv(gym.vector.VectorEnv):
    """`num_envs` copies of `MaterialParamEnv` stepped as one batch (Gymnasium's vector entry point of
    ``matrl/MaterialParam-v0``; RLlib: ``gym_env_vectorize_mode="vector_entry_point"``).

    What a sequential vector env cannot do: the copies form groups of `samples_per_target`
    (consecutive indices) that share one target, so one vector step holds num_envs /
    samples_per_target targets with samples_per_target sequences each, like one matrl rollout;
    the group's target is encoded once (one encoder call for all groups) and a step sends ONE
    `score_many` call with one request per group, which the reward service scores in parallel
    with the target's features computed once. Each copy keeps its own `np_random` (a group's
    first copy draws the target; every copy draws its own executor seed), so rewards equal what
    the single environments would give for the same draws. Autoreset is Gymnasium's default
    (NEXT_STEP): the step after a copy's episode ended resets it and ignores its action.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: MaterialEnvConfig | Mapping[str, Any] | None = None,
                 **kwargs: Any):
        if isinstance(config, MaterialEnvConfig):
            config = config.model_copy(update=kwargs) if kwargs else config
        else:
            config = MaterialEnvConfig.model_validate({**dict(config or {}), **kwargs})
        group = config.samples_per_target
        if num_envs < 1 or num_envs % group:
            raise ValueError(f"num_envs={num_envs} must be a positive multiple of samples_per_target={group} "
                             "(the copies of a group share one target)")
        first = MaterialParamEnv(config)
        single = config.model_copy(update={"samples_per_target": 1})
        self.envs = [first] + [MaterialParamEnv(single) for _ in range(num_envs - 1)]
        self.num_envs, self.group = num_envs, group
        self.config = first.config
        self.client = first.client
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = gym.vector.utils.batch_space(first.observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(first.action_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def _new_targets(self, groups: list[int]) -> None:
        draws = [self.envs[g * self.group]._draw_target() for g in groups]
        if not draws:
            return
        tokens = self.envs[0]._encode([t for t, _ in draws])
        for g, (target, index), image in zip(groups, draws, tokens):
            png = target.png()
            for env in self.envs[g * self.group:(g + 1) * self.group]:
                env._install(target, index, image, png)

    def _batch(self, observations: list[dict]) -> dict:
        return gym.vector.utils.concatenate(self.single_observation_space, observations,
                                            gym.vector.utils.create_empty_array(self.single_observation_space,
                                                                                self.num_envs))

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        seeds = ([None] * self.num_envs if seed is None else
                 [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed))
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} environments")
        for env, s in zip(self.envs, seeds):
            gym.Env.reset(env, seed=s)
        self._new_targets(list(range(self.num_envs // self.group)))
        self._autoreset[:] = False
        infos: dict = {}
        for i, env in enumerate(self.envs):
            infos = self._add_info(infos, env._reset_info(), i)
        return self._batch([env._obs() for env in self.envs]), infos

    def step(self, actions):
        actions = np.asarray(actions)
        n = self.num_envs
        rewards = np.zeros(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        infos: dict = {}
        resetting = self._autoreset.copy()
        for i in np.flatnonzero(resetting):
            gym.Env.reset(self.envs[i])
        self._new_targets([g for g in range(n // self.group) if resetting[g * self.group]])
        requests, members, details = [], [], {}
        for g in range(n // self.group):
            stepping = [i for i in range(g * self.group, (g + 1) * self.group) if not resetting[i]]
            if not stepping:
                continue
            group_request = None
            for i in stepping:
                tokens, invalid = self.envs[i]._tokens(actions[i])
                request, seed = self.envs[i]._request(tokens)
                details[i] = (seed, invalid)
                if group_request is None:
                    group_request = request
                else:
                    group_request.seeds.extend(request.seeds)
                    group_request.tokens.extend(request.tokens)
            requests.append(group_request)
            members.append(stepping)
        results = self.client.score_many(requests, timeout_s=self.config.reward_timeout_s) if requests else []
        for stepping, group_results in zip(members, results):
            for i, result in zip(stepping, group_results):
                seed, invalid = details[i]
                rewards[i], info = self.envs[i]._outcome(result, seed)
                info["invalid_tokens"] = invalid
                terminated[i] = True
                infos = self._add_info(infos, info, i)
        for i in np.flatnonzero(resetting):
            infos = self._add_info(infos, self.envs[i]._reset_info(), i)
        self._autoreset = terminated.copy()
        return (self._batch([env._obs() for env in self.envs]), rewards, terminated, np.zeros(n, dtype=bool), infos)

    def close_extras(self, **kwargs) -> None:
        for env in getattr(self, "envs", []):
            env.close()


class MaterialTokenEnv(_MaterialEnvBase):
    """One value token per step; the appearance reward at the last slot of the structure."""

    def __init__(self, config: MaterialEnvConfig | Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.observation_space = spaces.Dict({
            "image_tokens": self._image_space,
            "structure": spaces.Discrete(len(self.table)),
            "prefix": spaces.MultiDiscrete(np.full(self.max_slots, VALUE_BINS + 1, dtype=np.int64)),
            "step": spaces.Discrete(self.max_slots),
            "action_mask": spaces.Box(0, 1, (VALUE_BINS,), np.int8),
        })
        self.action_space = spaces.Discrete(VALUE_BINS)
        self._prefix = np.full(self.max_slots, NOT_YET, dtype=np.int64)
        self._step = 0
        self._invalid = 0

    def _obs(self) -> dict:
        slot = min(self._step, self._entry.tokens.num_slots - 1)
        return {"image_tokens": self._image_tokens, "structure": self._structure_index,
                "prefix": self._prefix.copy(), "step": slot,
                "action_mask": self._entry.tokens.token_masks[slot].numpy().astype(np.int8)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._next_target(reseeded=seed is not None)
        self._prefix[:] = NOT_YET
        self._step = 0
        self._invalid = 0
        return self._obs(), {"target_id": self._target.target_id,
                             "structure_id": self._entry.structure.structure_id}

    def step(self, action):
        if self._target is None:
            raise RuntimeError("step() before reset()")
        n = self._entry.tokens.num_slots
        if self._step >= n:
            raise RuntimeError("step() after the episode ended; call reset()")
        token, invalid = self._project(np.array([self._step]), np.array([int(action)]))
        self._prefix[self._step] = token[0]
        self._invalid += invalid
        self._step += 1
        if self._step < n:
            return self._obs(), 0.0, False, False, {}
        reward, info = self._score(self._prefix[:n])
        info["invalid_tokens"] = self._invalid
        return self._obs(), reward, True, False, info


def register() -> None:
    """Register both ids with Gymnasium (idempotent; done on import)."""
    if PARAM_ENV_ID not in gym.registry:
        gym.register(id=PARAM_ENV_ID, entry_point="rollout_workers.gym_env:MaterialParamEnv",
                     vector_entry_point="rollout_workers.gym_env:MaterialParamVectorEnv")
    if TOKEN_ENV_ID not in gym.registry:
        gym.register(id=TOKEN_ENV_ID, entry_point="rollout_workers.gym_env:MaterialTokenEnv")


register()
