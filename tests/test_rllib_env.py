"""The Gymnasium environments and RLlib modules of the material task: Gymnasium's env checker, the two
formulations agreeing with each other, the RLModules agreeing with the KV-cache sampler, RLlib PPO
(new API stack) running on CPU against the real gRPC reward service, and `matrl train --set max_wall_s`."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import ray
import torch
from gymnasium.utils.env_checker import check_env
from ray.rllib.core.columns import Columns

from matrl.jobs.reward import start_background
from policy.batching import collate
from policy.checkpoint import save_checkpoint
from policy.encoders import EncoderConfig
from policy.sampler import Sampler, SamplingConfig
from policy.tokenizer import Vocabulary
from reward_service.config import RewardConfig
from reward_service.pool import PoolConfig
from rollout_workers.gym_env import (PARAM_ENV_ID, TOKEN_ENV_ID, MaterialParamEnv, MaterialTokenEnv, build_table,
                                     structure_table)
from rollout_workers.targets import TargetsConfig
from tests.rl_helpers import GRAPHS, encoder, tiny_policy

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"synthetic": {"graphs": list(GRAPHS), "res": 64}}


@pytest.fixture(scope="module")
def service():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    server = start_background(RewardConfig(res=64), PoolConfig(workers=1))
    yield f"127.0.0.1:{server.server.port}"
    server.stop()
    ray.shutdown()


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("init") / "policy", tiny_policy(),
                           encoder=EncoderConfig().model_dump())


# ---- the environments ---------------------------------------------------------------------------

@pytest.mark.parametrize("env_id", [PARAM_ENV_ID, TOKEN_ENV_ID])
def test_registered_env_passes_gymnasium_env_checker_without_warnings(service, env_id):
    env = gymnasium.make(f"rollout_workers.gym_env:{env_id}", reward_address=service, targets=TARGETS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    gym_warnings = [str(w.message) for w in caught if "gymnasium" in str(w.filename) or "WARN" in str(w.message)]
    assert not gym_warnings, gym_warnings
    env.close()


def test_both_formulations_score_the_same_sequence_alike(service):
    """The same seed gives the same target; the token env fed the sequence action's tokens one at a
    time ends with the reward the sequence env gave (same executor seed, same service)."""
    param = MaterialParamEnv({"reward_address": service, "targets": TARGETS})
    token = MaterialTokenEnv({"reward_address": service, "targets": TARGETS})
    obs_p, info_p = param.reset(seed=7)
    obs_t, info_t = token.reset(seed=7)
    assert info_p == info_t
    np.testing.assert_array_equal(obs_p["image_tokens"], obs_t["image_tokens"])
    assert obs_p["structure"] == obs_t["structure"] and obs_t["step"] == 0
    n = param.table[obs_p["structure"]].tokens.num_slots
    assert obs_p["action_mask"][n:, 1:].sum() == 0 and obs_p["action_mask"][n:, 0].all()  # padding: token 0 only

    rng = np.random.default_rng(0)
    action = np.array([rng.choice(np.flatnonzero(row)) for row in obs_p["action_mask"]])
    _, reward_p, terminated, truncated, info = param.step(action)
    assert terminated and not truncated and info["ok"] and info["invalid_tokens"] == 0 and math.isfinite(reward_p)

    rewards = []
    for i in range(n):
        assert obs_t["step"] == i and obs_t["action_mask"][action[i]] == 1
        obs_t, reward, terminated, _, info_token = token.step(int(action[i]))
        rewards.append(reward)
        assert terminated == (i == n - 1)
    assert rewards[:-1] == [0.0] * (n - 1)
    assert rewards[-1] == pytest.approx(reward_p, abs=1e-6)
    assert info_token["seed"] == info["seed"] and info_token["invalid_tokens"] == 0
    param.close()
    token.close()


def test_param_env_projects_tokens_a_slot_does_not_admit_and_keeps_targets_for_k_episodes(service):
    env = MaterialParamEnv(reward_address=service, targets=TARGETS, samples_per_target=3)
    obs, info = env.reset(seed=1)
    mask = obs["action_mask"].astype(bool)
    n = env.table[obs["structure"]].tokens.num_slots
    action = np.full(env.max_slots, 127)
    expected_invalid = int((~mask[np.arange(n), 127]).sum())
    assert expected_invalid > 0  # ints, bools and enums admit fewer than 128 tokens
    _, reward, _, _, step_info = env.step(action)
    assert step_info["invalid_tokens"] == expected_invalid and step_info["ok"], step_info
    targets = [info["target_id"]] + [env.reset()[1]["target_id"] for _ in range(5)]
    assert targets[0] == targets[1] == targets[2] and targets[3] == targets[4] == targets[5]
    assert targets[0] != targets[3]
    with pytest.raises(ValueError, match=r"takes \(77,\) value tokens"):
        env.step(np.zeros(3, dtype=np.int64))
    env.close()


def test_vector_env_shares_targets_in_groups_and_scores_each_copy_as_a_single_request(service):
    from reward_service.api import ScoreRequest
    from reward_service.client import RewardClient

    env = gymnasium.make_vec(f"rollout_workers.gym_env:{PARAM_ENV_ID}", num_envs=4,
                             vectorization_mode="vector_entry_point", reward_address=service, targets=TARGETS,
                             samples_per_target=2)
    obs, info = env.reset(seed=5)
    ids = list(info["target_id"])
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    np.testing.assert_array_equal(obs["image_tokens"][0], obs["image_tokens"][1])
    rng = np.random.default_rng(1)
    actions = np.stack([[rng.choice(np.flatnonzero(row)) for row in mask] for mask in obs["action_mask"]])
    _, rewards, terminated, truncated, infos = env.step(actions)
    assert terminated.all() and not truncated.any() and infos["ok"].all() and (infos["invalid_tokens"] == 0).all()
    copies = env.unwrapped.envs
    with RewardClient(service) as client:  # the batched call split back to the right copy
        for i, copy in enumerate(copies):
            n = copy._entry.tokens.num_slots
            alone = client.score(ScoreRequest(structure=copy._entry.structure.reward_structure,
                                              seeds=[int(infos["seed"][i])], target=copy._png,
                                              tokens=[actions[i, :n].tolist()]))[0]
            assert rewards[i] == pytest.approx(alone.reward, abs=1e-6)
    _, rewards, terminated, _, infos = env.step(actions)  # NEXT_STEP autoreset: new targets, no reward
    assert not terminated.any() and (rewards == 0).all()
    assert infos["target_id"][0] == infos["target_id"][1] and infos["target_id"][0] not in ids
    env.close()
    with pytest.raises(ValueError, match="multiple of samples_per_target=2"):
        gymnasium.make_vec(f"rollout_workers.gym_env:{PARAM_ENV_ID}", num_envs=3,
                           vectorization_mode="vector_entry_point", reward_address=service, targets=TARGETS,
                           samples_per_target=2)


def test_bad_env_config_names_the_key():
    with pytest.raises(Exception, match="samples_per_targets"):
        MaterialParamEnv({"samples_per_targets": 2})


# ---- the RLModules (no Ray) -----------------------------------------------------------------------

def _spaces(formulation: str):
    from gymnasium import spaces

    table = build_table(structure_table(TargetsConfig.model_validate(TARGETS)), Vocabulary.from_registry())
    s = max(e.tokens.num_slots for e in table)
    image = spaces.Box(0, 6, (49, 1280), np.float32)
    if formulation == "sequence":
        obs = spaces.Dict({"image_tokens": image, "structure": spaces.Discrete(len(table)),
                           "action_mask": spaces.Box(0, 1, (s, 128), np.int8)})
        return table, obs, spaces.MultiDiscrete([128] * s)
    obs = spaces.Dict({"image_tokens": image, "structure": spaces.Discrete(len(table)),
                       "prefix": spaces.MultiDiscrete([129] * s), "step": spaces.Discrete(s),
                       "action_mask": spaces.Box(0, 1, (128,), np.int8)})
    return table, obs, spaces.Discrete(128)


def _model_config(init, table) -> dict:
    return {"init": str(init), "structures": [e.structure.graph_json for e in table], "top_p": 0.9}


def test_sequence_module_samples_with_the_kv_cache_and_scores_by_teacher_forcing(init_checkpoint):
    from rollout_workers.rllib_module import MaterialRLModule, SlotSequenceDistribution

    table, obs_space, act_space = _spaces("sequence")
    module = MaterialRLModule(observation_space=obs_space, action_space=act_space,
                              model_config=_model_config(init_checkpoint, table), inference_only=False)
    obs = {"image_tokens": encoder()(torch.rand(3, 3, 64, 64)).tokens, "structure": torch.tensor([0, 1, 1])}
    torch.manual_seed(3)
    out = module.forward_exploration({Columns.OBS: obs})
    tokens = out[Columns.ACTIONS]
    assert tokens.shape == (3, act_space.shape[0])
    # the same draw by the plain sampler: identical tokens, and the log-probs agree
    torch.manual_seed(3)
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    batch = collate([table[i].tokens for i in (0, 1, 1)])
    ref = Sampler(module.policy, SamplingConfig(top_p=0.9)).sample(batch, obs["image_tokens"], seed=seed)
    n = batch.num_slots
    torch.testing.assert_close(tokens[:, :n], ref.tokens)
    assert (tokens[:, n:] == 0).all()
    torch.testing.assert_close(out[Columns.ACTION_LOGP], ref.log_probs.sum(1), atol=1e-3, rtol=1e-5)
    # the learner's view of the same action: log p equals the behaviour log p (ratio 1), padding adds 0
    train = module.forward_train({Columns.OBS: obs, Columns.ACTIONS: tokens})
    dist = SlotSequenceDistribution.from_logits(train[Columns.ACTION_DIST_INPUTS])
    torch.testing.assert_close(dist.logp(tokens), out[Columns.ACTION_LOGP], atol=1e-4, rtol=1e-6)
    assert (dist.entropy() > 0).all()
    dist.logp(tokens).sum().backward()
    assert module.policy.head.weight.grad is not None
    values = module.compute_values({Columns.OBS: obs})
    assert values.shape == (3,) and torch.isfinite(values).all()
    # greedy inference equals the greedy sampler; EnvRunner copies carry no value network
    greedy = Sampler(module.policy, SamplingConfig(greedy=True)).sample(batch, obs["image_tokens"]).tokens
    torch.testing.assert_close(module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS][:, :n], greedy)
    runner_copy = MaterialRLModule(observation_space=obs_space, action_space=act_space,
                                   model_config=_model_config(init_checkpoint, table), inference_only=True)
    assert not hasattr(runner_copy, "value")
    shipped = module.get_state(inference_only=True)
    assert shipped and not any(k.startswith("value.") for k in shipped)
    runner_copy.set_state(shipped)


def test_token_module_reads_the_policy_at_the_current_slot(init_checkpoint):
    from rollout_workers.rllib_module import MaterialTokenRLModule

    table, obs_space, act_space = _spaces("token")
    module = MaterialTokenRLModule(observation_space=obs_space, action_space=act_space,
                                   model_config=_model_config(init_checkpoint, table), inference_only=False)
    entry = table[0]
    n = entry.tokens.num_slots
    image = encoder()(torch.rand(1, 3, 64, 64)).tokens
    tokens = Sampler(module.policy, SamplingConfig()).sample(collate([entry.tokens]), image, seed=5).tokens[0]
    full = module.policy(collate([entry.tokens], [tokens.tolist()]), image)[0]  # (n, 128) teacher forcing
    steps = [0, 1, n // 2, n - 1]
    prefix = torch.full((len(steps), obs_space["prefix"].shape[0]), 128)
    for row, t in enumerate(steps):
        prefix[row, :t] = tokens[:t]
    obs = {"image_tokens": image.expand(len(steps), -1, -1), "structure": torch.zeros(len(steps), dtype=torch.long),
           "prefix": prefix, "step": torch.tensor(steps)}
    logits = module.forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(logits, full[steps], atol=1e-4, rtol=1e-5)
    out = module.forward_exploration({Columns.OBS: obs})
    chosen = out[Columns.ACTIONS]
    assert entry.tokens.token_masks[steps, chosen].all()
    expected = torch.log_softmax(full[steps].float(), -1)[torch.arange(len(steps)), chosen]
    torch.testing.assert_close(out[Columns.ACTION_LOGP], expected, atol=1e-4, rtol=1e-5)
    assert module.compute_values({Columns.OBS: obs}).shape == (len(steps),)


# ---- RLlib PPO and the wall-time limit, against the real service --------------------------------------

def _job(init, **extra):
    from matrl.config import load_config
    from matrl.jobs.train import TrainJobConfig

    sets = {"init": str(init), "targets.synthetic.graphs": list(GRAPHS), "rollout.targets_per_worker": 2,
            "rollout.sampling.samples_per_target": 4, "ppo.minibatch": 4, "ppo.epochs": 1, "validation.targets": 2}
    return load_config(TrainJobConfig, "train", "tiny", {**sets, **extra})


def test_rllib_ppo_sequence_formulation_trains_two_iterations_on_cpu(service, init_checkpoint):
    from matrl.jobs.rllib_ppo import RLlibConfig, RLlibRun, evaluate_policy, ppo_config
    from policy.checkpoint import load_policy

    job = _job(init_checkpoint)
    config = ppo_config(job, init_checkpoint, service, RLlibConfig(envs_per_env_runner=4, cpus_per_env_runner=0.5))
    assert config.train_batch_size_per_learner == 8 and config.minibatch_size == 4 and config.lr == job.ppo.lr
    run = RLlibRun(config)
    try:
        out = run.train_for(0.0, min_iterations=2)
        weights = run.policy_state()
    finally:
        run.stop()
    assert out["iterations"] == 2 and out["trajectories"] == 16 and out["env_steps"] == 16
    assert all(math.isfinite(row["reward_mean"]) for row in out["history"])
    init, info = load_policy(init_checkpoint)
    assert set(weights) == set(init.state_dict())
    assert any(not torch.equal(weights[k], v) for k, v in init.state_dict().items())  # PPO moved the policy
    val = evaluate_policy(weights, info.policy.to_dict(), info.encoder, job.validation_targets(), 2, 0, service)
    assert len(val["rewards"]) == 2 and math.isfinite(val["reward_mean"])


@pytest.mark.slow
def test_rllib_ppo_token_formulation_trains_an_iteration_on_cpu(service, init_checkpoint):
    from matrl.jobs.rllib_ppo import RLlibConfig, RLlibRun, ppo_config

    job = _job(init_checkpoint, **{"rollout.targets_per_worker": 1})
    run = RLlibRun(ppo_config(job, init_checkpoint, service, RLlibConfig(formulation="token", envs_per_env_runner=4,
                                                                          cpus_per_env_runner=0.5)))
    try:
        out = run.train_for(0.0, min_iterations=1)
    finally:
        run.stop()
    assert out["env_steps"] >= 4 * 77 and out["trajectories"] >= 4


def test_train_job_stops_at_max_wall_s(service, init_checkpoint, tmp_path):
    from matrl.jobs.train import TrainJob

    job = _job(init_checkpoint, **{"reward.address": service, "iterations": 50, "max_wall_s": 0.01,
                                   "validation.every": 0})
    train = TrainJob(job, tmp_path / "run", local=True, progress=False)
    try:
        summary = train.run()
    finally:
        train.close()
    assert summary["iterations"] == 1 and summary["stopped_by"] == "max_wall_s"
    assert summary["trajectories"] == 8 and len(summary["val_history"]) == 2  # before RL and at the stop
    assert (tmp_path / "run" / "checkpoints" / "latest" / "model.safetensors").is_file()


@pytest.mark.slow  # 45 s; the default suite keeps test_rllib_ppo_sequence_formulation_trains_two_iterations_on_cpu
def test_side_by_side_benchmark_quick_runs_both_systems(tmp_path):
    """`benchmarks/rllib_baseline.py --quick`: matrl and RLlib PPO in one run, a row each (~1 min)."""
    import json

    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rllib_baseline.py"), "--quick", "--json",
                          "--work", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["system"] for r in rows] == ["matrl", "rllib"]
    for r in rows:
        assert r["trajectories"] > 0 and r["trajectories_per_s"] > 0 and math.isfinite(r["val_reward"])
    assert rows[0]["stopped_by"] == "max_wall_s" and rows[1]["iterations"] >= 2
    assert rows[0]["matrl_speedup"] == 1.0
    assert "trajectories" in run.stdout and "matrl x" in run.stdout
