"""PPO maths against hand-computed values, and the learner's invariants on a real (tiny) policy."""

import math

import pytest
import torch

from learner.ppo import (PPOConfig, PPOLearner, gae, kl_shaped_rewards, ppo_loss, target_mean_baseline,
                         token_log_probs)
from tests.rl_helpers import rollout_worker, tiny_policy


def test_gae_matches_hand_computed_values_with_padding():
    rewards = torch.tensor([[0.1, 0.0, 1.0], [0.0, 0.5, 7.0]])
    values = torch.tensor([[0.5, 0.4, 0.2], [0.3, 0.1, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: A2 = 1.0 - 0.2; A1 = (0 + .9*.2 - .4) + .72*A2; A0 = (.1 + .9*.4 - .5) + .72*A1
    a2 = 0.8
    a1 = -0.22 + 0.72 * a2
    a0 = -0.04 + 0.72 * a1
    # row 1: slot 1 is the last real one (terminal after it); the padded slot is ignored
    b1 = 0.5 - 0.1
    b0 = (0.0 + 0.9 * 0.1 - 0.3) + 0.72 * b1
    expected = torch.tensor([[a0, a1, a2], [b0, b1, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)


def test_kl_shaped_rewards_put_the_appearance_reward_on_the_last_real_slot():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.4, 0.0]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 1.0], [0.2, 0.8, 1.0]]))
    mask = torch.tensor([[True, True, True], [True, True, False]])
    r = kl_shaped_rewards(torch.tensor([1.0, -1.0]), logp, ref, mask, kl_coeff=0.1)
    expected = torch.tensor([[-0.1 * math.log(2), 0.0, -0.1 * math.log(0.5) + 1.0],
                             [0.0, -0.1 * math.log(0.5) - 1.0, 0.0]])
    assert torch.allclose(r, expected, atol=1e-6)
    assert torch.equal(kl_shaped_rewards(torch.zeros(2), logp, logp, mask, 0.5), torch.zeros(2, 3))


def test_ppo_loss_matches_hand_computed_values():
    cfg = PPOConfig(clip=0.1, value_clip=0.2, value_coef=0.5, entropy_coef=0.01, normalize_advantages=False)
    mask = torch.tensor([[True, True]])
    new_logp = torch.log(torch.tensor([[0.6, 0.6]]))
    old_logp = torch.log(torch.tensor([[0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0]])
    values, old_values, returns = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 2.0]])
    entropy = torch.tensor([[1.5, 0.5]])
    terms = ppo_loss(new_logp, entropy, values, old_logp, old_logp, old_values, adv, returns, mask, cfg)
    # ratio 1.2: A=+1 -> max(-1.2, -1.1) = -1.1 ; A=-1 -> max(1.2, 1.1) = 1.2
    assert terms.policy_loss.item() == pytest.approx((-1.1 + 1.2) / 2, abs=1e-6)
    # clipped value 0.7: max((1-2)^2, (0.7-2)^2) = 1.69 -> 0.5 * 1.69
    assert terms.value_loss.item() == pytest.approx(0.845, abs=1e-6)
    assert terms.entropy.item() == pytest.approx(1.0)
    assert terms.loss.item() == pytest.approx(0.05 + 0.5 * 0.845 - 0.01 * 1.0, abs=1e-6)
    assert terms.clipfrac.item() == pytest.approx(1.0)
    assert terms.approx_kl.item() == pytest.approx(0.2 - math.log(1.2), abs=1e-6)


def test_importance_weight_is_truncated_at_the_cap():
    cfg = PPOConfig(normalize_advantages=False, importance_cap=2.0)
    mask = torch.tensor([[True]])
    logp = torch.log(torch.tensor([[0.5]]))
    one = torch.ones(1, 1)
    # behaviour prob 0.1 -> pi_old / mu = 5, truncated to 2: the surrogate -A * 1 is doubled
    terms = ppo_loss(logp, one * 0, one * 0, logp, torch.log(torch.tensor([[0.1]])), one * 0, one, one * 0, mask, cfg)
    assert terms.policy_loss.item() == pytest.approx(-2.0)


def test_entropy_of_masked_logits_is_finite_and_counts_valid_tokens_only():
    logits = torch.full((1, 1, 128), torch.finfo(torch.float32).min)
    logits[..., :4] = 0.0
    logp, ent = token_log_probs(logits, torch.tensor([[2]]))
    assert logp.item() == pytest.approx(math.log(0.25))
    assert ent.item() == pytest.approx(math.log(4))


def test_target_mean_baseline_centres_each_target():
    r = torch.tensor([1.0, 3.0, 10.0, 0.0])
    assert torch.equal(target_mean_baseline(r, ["a", "a", "b", "b"]), torch.tensor([-1.0, 1.0, 5.0, -5.0]))


@pytest.fixture(scope="module")
def table():
    policy = tiny_policy()
    batch, _ = rollout_worker(policy).rollout(4, seed=3)
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def test_value_network_starts_from_the_policy_and_kl_to_reference_starts_at_zero(table):
    policy = tiny_policy()
    learner = PPOLearner(policy, PPOConfig(epochs=1, minibatch=8))
    for name, tensor in policy.trunk.state_dict().items():
        assert torch.equal(learner.value.trunk.state_dict()[name], tensor), name
    assert learner.value.head.weight.shape == (1, policy.config.dim)
    metrics = learner.update(table)
    assert metrics["kl_ref"] == 0.0  # policy == reference before the first step
    assert all(math.isfinite(metrics[k]) for k in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl"))
    assert learner.version == 1


def test_an_update_raises_the_probability_of_rewarded_sequences(table):
    """Rows with a high reward become more likely and rows with a low reward less likely."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from learner.trajectory import StructureCache, to_tensors
    from policy.tokenizer import Vocabulary

    policy = tiny_policy()
    n = table.num_rows
    rewards = pa.array([1.0 if i % 2 == 0 else -1.0 for i in range(n)], pa.float64())
    table = table.set_column(table.schema.get_field_index("reward"), "reward", rewards)
    t = to_tensors(table, StructureCache(Vocabulary.from_dict(policy.config.vocab)))
    with torch.no_grad():
        before = policy.log_probs(t.batch, t.image_tokens).sum(1)
    learner = PPOLearner(policy, PPOConfig(epochs=4, minibatch=8, lr=1e-3, target_kl=None, entropy_coef=0.0))
    learner.update(table, torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = learner.policy.log_probs(t.batch, t.image_tokens).sum(1)
    change = after - before
    good, bad = change[0::2].mean().item(), change[1::2].mean().item()
    assert good > 0 > bad, (good, bad)
    assert pc.sum(table.column("ok")).as_py() == n
