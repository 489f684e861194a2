"""Sampler: KV cache equals full re-runs, determinism, masks, greedy/top-k/top-p, log-probs, CUDA graphs."""

from __future__ import annotations

import pytest
import torch

from policy.batching import collate
from policy.model import BOS
from policy.sampler import Sampler, SamplingConfig, choose, sample_by_rerun
from policy.tokenizer import GraphTokenizer
from tests.test_policy_model import chain_graph, images, make_policy, rewired_graph, tiny_graph


def structures(*graphs):
    return collate([GraphTokenizer(g).structure() for g in graphs])


def sharpened_policy(seed=0):
    """A policy with distinct per-token preferences, so sampling outcomes are informative."""
    policy = make_policy(seed)
    with torch.no_grad():
        policy.head.bias.copy_(torch.randn(128, generator=torch.Generator().manual_seed(seed)) * 2)
    return policy


def test_kv_cache_logits_equal_a_full_rerun():
    policy = sharpened_policy()
    batch = structures(chain_graph(), rewired_graph(), tiny_graph())
    img = images(3)
    result = Sampler(policy).sample(batch, img, seed=1)
    full = policy(batch, img, result.tokens)
    trunk = policy.trunk
    ctx = trunk.context(batch, img)
    for kv_len in ("prefix", "whole cache"):
        cache = trunk.new_cache(batch.num_slots)
        prev = torch.full((3,), BOS, dtype=torch.long)
        for t in range(batch.num_slots):
            span = t + 1 if kv_len == "prefix" else None
            step = policy.step_logits(ctx, prev, torch.tensor(t), cache, kv_len=span)
            torch.testing.assert_close(step, full[:, t], atol=1e-4, rtol=1e-4)
            prev = result.tokens[:, t]


def test_cached_sampling_equals_rerunning_the_prefix():
    policy = sharpened_policy()
    batch, img = structures(chain_graph(), tiny_graph()), images(2)
    for config in (SamplingConfig(), SamplingConfig(temperature=0.7, top_k=20, top_p=0.9)):
        cached = Sampler(policy, config).sample(batch, img, seed=5)
        rerun = sample_by_rerun(policy, batch, img, seed=5, config=config)
        assert torch.equal(cached.tokens, rerun.tokens)
        torch.testing.assert_close(cached.log_probs, rerun.log_probs, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cached.sample_log_probs, rerun.sample_log_probs, atol=1e-4, rtol=1e-4)


def test_samples_per_graph_share_one_context_exactly():
    policy = sharpened_policy()
    batch, img = structures(chain_graph(), tiny_graph()), images(2)
    grouped = Sampler(policy).sample(batch, img, seed=3, samples_per_graph=4)
    repeated = Sampler(policy).sample(batch.repeat_interleave(4), img.repeat_interleave(4, 0), seed=3)
    rerun = sample_by_rerun(policy, batch, img, seed=3, samples_per_graph=4)
    assert grouped.tokens.shape == (8, batch.num_slots)
    assert torch.equal(grouped.tokens, repeated.tokens) and torch.equal(grouped.tokens, rerun.tokens)
    torch.testing.assert_close(grouped.log_probs, repeated.log_probs, atol=1e-5, rtol=1e-5)
    assert not torch.equal(grouped.tokens[0], grouped.tokens[1])
    assert (grouped.tokens[4:, len(GraphTokenizer(tiny_graph())):] == 0).all()  # tiny graph's padding


def test_sampling_is_deterministic_for_a_seed():
    policy = sharpened_policy()
    batch, img = structures(chain_graph(), chain_graph()), images(2)
    sampler = Sampler(policy)
    a, b, c = (sampler.sample(batch, img, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.tokens[0], a.tokens[1])  # rows draw independent uniforms


@pytest.mark.parametrize("config", [SamplingConfig(temperature=5.0), SamplingConfig(top_k=3),
                                    SamplingConfig(top_p=0.5), SamplingConfig(greedy=True)])
def test_sampled_tokens_are_always_admitted_by_the_masks(config):
    policy = make_policy()
    with torch.no_grad():  # push mass onto tokens the masks forbid for most slots
        policy.head.bias.zero_()
        policy.head.bias[100:] = 50.0
    batch, img = structures(chain_graph(), tiny_graph()), images(2)
    for seed in range(3):
        tokens = Sampler(policy, config).sample(batch, img, seed=seed).tokens
        assert batch.token_masks.gather(2, tokens[..., None])[..., 0][batch.slot_mask].all()
        assert (tokens[~batch.slot_mask] == 0).all()


def test_log_probs_are_the_policys_under_teacher_forcing():
    policy = sharpened_policy()
    batch, img = structures(chain_graph(), tiny_graph()), images(2)
    result = Sampler(policy, SamplingConfig(temperature=1.3, top_k=40)).sample(batch, img, seed=2)
    reference = policy.log_probs(batch.with_tokens(result.tokens), img)
    torch.testing.assert_close(result.log_probs, reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(result.sample_log_probs, result.log_probs)
    plain = Sampler(policy).sample(batch, img, seed=2)
    torch.testing.assert_close(plain.sample_log_probs, plain.log_probs)


def test_greedy_top_k_1_and_tiny_top_p_all_pick_the_argmax():
    policy = sharpened_policy()
    batch, img = structures(chain_graph()), images(1)
    greedy = Sampler(policy, SamplingConfig(greedy=True)).sample(batch, img, seed=0).tokens
    assert torch.equal(greedy, Sampler(policy, SamplingConfig(greedy=True)).sample(batch, img, seed=9).tokens)
    assert torch.equal(greedy, policy(batch, img, greedy).argmax(-1))
    for config in (SamplingConfig(top_k=1), SamplingConfig(top_p=1e-6)):
        assert torch.equal(greedy, Sampler(policy, config).sample(batch, img, seed=4).tokens)


@pytest.mark.parametrize("config", [SamplingConfig(), SamplingConfig(temperature=0.5),
                                    SamplingConfig(top_k=5), SamplingConfig(top_p=0.6)])
def test_draws_follow_the_warped_distribution(config):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 128, generator=gen) * 1.5
    logits[:, 40:] = torch.finfo(torch.float32).min  # masked tail
    n = 40000
    token, _, slogp = choose(logits.expand(n, -1), 1.0 - torch.rand(n, generator=gen), config)
    freq = torch.bincount(token, minlength=128).float() / n
    expected = torch.zeros(128).index_put_((token,), slogp.exp())  # sampled distribution's probabilities
    assert (freq[40:] == 0).all()
    assert (freq - expected).abs().max() < 0.015
    warped = logits[0] / config.temperature
    probs = torch.softmax(warped, -1)
    if config.top_k:
        assert (freq > 0).sum() <= config.top_k
    if config.top_p < 1:
        ordered = probs.sort(descending=True).values
        assert (freq > 0).sum() <= int((ordered.cumsum(0) < config.top_p).sum()) + 1
    if not config.top_k and config.top_p == 1:
        assert (freq - probs).abs().max() < 0.015


def test_bad_sampling_configs_raise():
    for kwargs, match in (({"temperature": 0}, "greedy=True"), ({"top_k": 200}, "top_k"),
                          ({"top_p": 0}, "top_p"), ({"dtype": "fp8"}, "dtype")):
        with pytest.raises(ValueError, match=match):
            SamplingConfig(**kwargs)


@pytest.mark.gpu
def test_cuda_graphs_match_eager_cuda_and_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    policy = sharpened_policy()
    batch, img = structures(chain_graph(), rewired_graph(), tiny_graph()), images(3)
    cpu = Sampler(policy).sample(batch, img, seed=7, samples_per_graph=8)
    policy = policy.cuda()
    img = img.cuda()
    eager = Sampler(policy, SamplingConfig(cuda_graphs=False)).sample(batch, img, seed=7, samples_per_graph=8)
    graphed = Sampler(policy, SamplingConfig(kv_bucket=4))
    first = graphed.sample(batch, img, seed=7, samples_per_graph=8)
    again = graphed.sample(batch, img, seed=7, samples_per_graph=8)  # replays the captured graphs
    assert torch.equal(first.tokens, eager.tokens) and torch.equal(again.tokens, eager.tokens)
    torch.testing.assert_close(first.log_probs, eager.log_probs)
    assert (first.tokens.cpu() == cpu.tokens).float().mean() > 0.99
    torch.testing.assert_close(first.log_probs.cpu()[first.tokens.cpu() == cpu.tokens],
                               cpu.log_probs[first.tokens.cpu() == cpu.tokens], atol=1e-3, rtol=1e-3)
    bf16 = Sampler(policy, SamplingConfig(dtype="bfloat16")).sample(batch, img, seed=7, samples_per_graph=8)
    batch = batch.repeat_interleave(8)
    assert batch.to("cuda").token_masks.gather(2, bf16.tokens[..., None])[..., 0].all()
