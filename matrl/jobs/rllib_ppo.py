"""RLlib PPO (new API stack: RLModule, Learner, EnvRunners) on the material environments: the baseline a
peer would build with the library everyone uses, configured from the same `TrainJobConfig` as
`matrl train` so that both see the same targets, init, PPO hyper-parameters and reward service.

Mapping from a `TrainJobConfig` (tiny preset: 64 trajectories per iteration, minibatch 32, 4
epochs, lr 1e-4, clip 0.2, grad clip 0.5, no entropy bonus, value coefficient 0.1, gamma 1,
lambda 0.95, top-p 0.9):
  * formulation "sequence" (`MaterialParamEnv` + `MaterialRLModule`, episode length 1):
    train_batch_size = trajectories per iteration, minibatch = ppo.minibatch trajectories;
  * formulation "token" (`MaterialTokenEnv` + `MaterialTokenRLModule`, one step per slot): the same
    counts times the mean slot count of the structures (RLlib batches timesteps, not episodes);
  * targets are shared by `rollout.sampling.samples_per_target` sequences, as matrl's rollout
    workers sample that many per target: in the batched vector env (sequence formulation, default)
    by that many env copies at once, in a sequential vector env by that many consecutive episodes;
  * PPO's own KL term to the previous policy is off (`use_kl_loss=False`): matrl's KL is to the
    frozen pre-trained policy with a 0.001 weight, which RLlib's PPO has no counterpart for; the
    clipped ratio is the trust region in both.
What differs is how the work is organised, not the maths: see docs/benchmarks.md.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from matrl.jobs.train import TrainJobConfig
from rollout_workers.gym_env import PARAM_ENV_ID, TOKEN_ENV_ID, MaterialEnvConfig, build_table, structure_table


class RLlibConfig(BaseModel):
    """How RLlib is laid out on the machine (the algorithm's maths comes from the TrainJobConfig)."""

    model_config = ConfigDict(extra="forbid")

    formulation: Literal["sequence", "token"] = Field("sequence", description="sequence: the whole parameter "
                                                      "sequence as one action; token: one token per step")
    env_runners: int = Field(1, ge=0, description="EnvRunner actors (0: sample in the driver)")
    envs_per_env_runner: int = Field(8, ge=1, description="vectorised environments per EnvRunner (its batch)")
    cpus_per_env_runner: float = Field(1.0, ge=0)
    gpus_per_env_runner: float = Field(0.0, ge=0)
    num_learners: int = Field(0, ge=0, description="0: the learner runs in the driver")
    gpus_per_learner: float = Field(0.0, ge=0)
    vectorize: Literal["auto", "vector_entry_point", "sync", "async"] = Field(
        "auto", description="gymnasium vector env mode. auto: the batched `MaterialParamVectorEnv` (vector_entry_point: "
                            "groups of samples_per_target envs share a target, one reward call per step) for the "
                            "sequence formulation, sync (envs stepped one after another) for the token one; "
                            "async: one process per environment")
    torch_threads: int | None = Field(1, ge=1, description="intra-op threads of EnvRunners, envs and learner")


def _mean_slots(job: TrainJobConfig, vocab) -> float:
    table = build_table(structure_table(job.targets), vocab)
    return sum(e.tokens.num_slots for e in table) / len(table)


def ppo_config(job: TrainJobConfig, init: str | Path, reward_address: str, rl: RLlibConfig = RLlibConfig(),
               token_file: str | None = None):
    """The RLlib `PPOConfig` equivalent to `job` (see the module docstring for the mapping)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from policy.checkpoint import read_checkpoint_info
    from policy.tokenizer import Vocabulary
    from rollout_workers.rllib_module import MaterialRLModule, MaterialTokenRLModule

    info = read_checkpoint_info(init)
    sampling = job.rollout.sampling
    env_config = MaterialEnvConfig(reward_address=reward_address, token_file=token_file,
                                   reward_timeout_s=sampling.reward_timeout_s, targets=job.targets,
                                   vocab=info.policy.vocab, encoder=info.encoder,
                                   samples_per_target=sampling.samples_per_target, torch_threads=rl.torch_threads,
                                   device="auto" if rl.gpus_per_env_runner > 0 else "cpu")
    per_iteration, minibatch = job.trajectories_per_iteration, job.ppo.minibatch
    if rl.formulation == "token":
        slots = _mean_slots(job, Vocabulary.from_dict(info.policy.vocab))
        per_iteration, minibatch = math.ceil(per_iteration * slots), math.ceil(minibatch * slots)
        env_id, module = TOKEN_ENV_ID, MaterialTokenRLModule
    else:
        env_id, module = PARAM_ENV_ID, MaterialRLModule
    model_config = {"init": str(init), "structures": [s.graph_json for s in structure_table(job.targets)],
                    "top_p": sampling.top_p, "temperature": sampling.temperature, "torch_threads": rl.torch_threads}
    vectorize = rl.vectorize
    if vectorize == "auto":
        vectorize = "vector_entry_point" if rl.formulation == "sequence" else "sync"
    ppo = job.ppo
    return (
        PPOConfig()
        .environment(f"rollout_workers.gym_env:{env_id}", env_config=env_config.model_dump(mode="json"))
        .env_runners(num_env_runners=rl.env_runners, num_envs_per_env_runner=rl.envs_per_env_runner,
                     num_cpus_per_env_runner=rl.cpus_per_env_runner, num_gpus_per_env_runner=rl.gpus_per_env_runner,
                     gym_env_vectorize_mode=vectorize)
        .learners(num_learners=rl.num_learners, num_gpus_per_learner=rl.gpus_per_learner)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module, model_config=model_config))
        .training(lr=ppo.lr, train_batch_size_per_learner=per_iteration, minibatch_size=minibatch,
                  num_epochs=ppo.epochs, clip_param=ppo.clip, grad_clip=ppo.grad_clip, grad_clip_by="global_norm",
                  entropy_coeff=ppo.entropy_coef, vf_loss_coeff=ppo.value_coef, gamma=ppo.gamma, lambda_=ppo.lam,
                  use_kl_loss=False)
        .debugging(seed=job.seed)
    )


class RLlibRun:
    """A built RLlib PPO algorithm, trained for a wall-time budget."""

    def __init__(self, config):
        self.algo = config.build_algo()
        self.iterations = 0
        self.train_s = 0.0
        self.history: list[dict] = []

    def train_for(self, wall_s: float, progress=None, min_iterations: int = 1) -> dict:
        """`algo.train()` until the summed time of those calls reaches `wall_s` (and at least
        `min_iterations` calls were made); returns the totals.

        Trajectories are finished episodes (one per sequence action; one per structure's slots in
        the token formulation)."""
        from ray.rllib.utils.metrics import (
            ENV_RUNNER_RESULTS,
            ENV_RUNNER_SAMPLING_TIMER,
            EPISODE_RETURN_MEAN,
            LEARNER_UPDATE_TIMER,
            NUM_ENV_STEPS_SAMPLED_LIFETIME,
            NUM_EPISODES_LIFETIME,
            TIMERS,
        )

        result: dict = {}
        while self.train_s < wall_s or self.iterations < min_iterations:
            start = time.perf_counter()
            result = self.algo.train()
            took = time.perf_counter() - start
            self.train_s += took
            self.iterations += 1
            runners = result.get(ENV_RUNNER_RESULTS, {})
            timers = result.get(TIMERS, {})
            row = {"iteration": self.iterations, "iteration_s": took, "train_s": self.train_s,
                   "episodes": int(runners.get(NUM_EPISODES_LIFETIME, 0)),
                   "env_steps": int(runners.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)),
                   "reward_mean": float(runners.get(EPISODE_RETURN_MEAN, math.nan)),
                   # RLlib's own timers (smoothed over iterations): sampling and learner phases
                   "sample_s": float(timers.get(ENV_RUNNER_SAMPLING_TIMER, math.nan)),
                   "learn_s": float(timers.get(LEARNER_UPDATE_TIMER, math.nan))}
            self.history.append(row)
            if progress is not None:
                progress(row)
        last = self.history[-1] if self.history else {"episodes": 0, "env_steps": 0}
        return {"iterations": self.iterations, "train_wall_s": self.train_s, "trajectories": last["episodes"],
                "env_steps": last["env_steps"], "history": self.history}

    def policy_state(self) -> dict:
        """The learner's `MaterialPolicy` weights (a state dict of CPU tensors)."""
        import torch
        from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

        state = self.algo.learner_group.get_state(components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}")
        module = state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
        return {k[len("policy."):]: torch.as_tensor(v) for k, v in module.items() if k.startswith("policy.")}

    def stop(self) -> None:
        self.algo.stop()


def evaluate_policy(weights: dict, policy_config: dict, encoder: dict, targets, num_targets: int, seed: int,
                    reward_address: str, token_file: str | None = None, device: str = "cpu") -> dict:
    """Greedy validation exactly as `matrl train` validates (`RolloutWorker.evaluate` on the fixed
    targets of `targets`, scored by the reward service at `reward_address`)."""
    from reward_service.client import RewardClient
    from rollout_workers.targets import build_targets
    from rollout_workers.worker import RolloutConfig, RolloutWorker

    with RewardClient(reward_address, token_file=token_file) as client:
        worker = RolloutWorker("validation", policy_config, encoder, build_targets(targets), client,
                               RolloutConfig(device=device))
        worker.set_weights(weights, 0)
        return worker.evaluate(worker.targets.fixed(num_targets), seed)
