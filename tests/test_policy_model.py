"""Policy and value network: teacher forcing, causality, connectivity, padding, training, checkpoints."""

from __future__ import annotations

import io

import pytest
import torch

from graph_executor.ir import parse_graph
from policy.batching import collate
from policy.model import MaterialPolicy, PolicyConfig, ValueNetwork
from policy.tokenizer import GraphTokenizer, Vocabulary

T, C = 4, 16  # small image-token grid for fast tests


def chain_graph():
    return parse_graph({"name": "chain", "nodes": {
        "a": {"type": "perlin_fbm"},
        "b": {"type": "perlin_fbm", "params": {"scale": 12}},
        "mix": {"type": "blend", "inputs": {"foreground": "a", "background": "b"}},
        "lv": {"type": "levels", "inputs": {"in": "mix"}},
        "out": {"type": "output", "inputs": {"height": "lv"}},
    }})


def rewired_graph():
    """Same node sequence as chain_graph, other wiring: levels reads noise b directly."""
    return parse_graph({"name": "rewired", "nodes": {
        "a": {"type": "perlin_fbm"},
        "b": {"type": "perlin_fbm", "params": {"scale": 12}},
        "mix": {"type": "blend", "inputs": {"foreground": "a", "background": "a"}},
        "lv": {"type": "levels", "inputs": {"in": "b"}},
        "out": {"type": "output", "inputs": {"height": "lv", "roughness": "mix"}},
    }})


def tiny_graph():
    return parse_graph({"name": "tiny", "nodes": {
        "n": {"type": "perlin_fbm"}, "out": {"type": "output", "inputs": {"height": "n"}}}})


def make_policy(seed=0, **overrides):
    torch.manual_seed(seed)
    config = PolicyConfig(vocab=Vocabulary.from_registry().to_dict(), image_token_dim=C, image_tokens=T, **overrides)
    return MaterialPolicy(config).eval()


def batch_of(*graphs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    toks = [GraphTokenizer(g) for g in graphs]
    tokens = [[int(torch.randint(int(t.masks[i].sum()), (1,), generator=gen)) for i in range(len(t))] for t in toks]
    return collate([t.structure() for t in toks], tokens)


def images(b, seed=0):
    return torch.randn(b, T, C, generator=torch.Generator().manual_seed(seed))


def test_teacher_forcing_logits_are_masked_per_slot():
    policy, batch = make_policy(), batch_of(chain_graph(), tiny_graph())
    logits = policy(batch, images(2))
    assert logits.shape == (2, batch.num_slots, 128)
    lowest = torch.finfo(logits.dtype).min
    assert ((logits == lowest) == ~batch.token_masks).all()
    assert torch.isfinite(policy.loss(batch, images(2)))


def test_decoder_is_causal():
    policy, batch = make_policy(), batch_of(chain_graph())
    j = 6
    changed = batch.tokens.clone()
    changed[0, j] = (changed[0, j] + 1) % int(batch.token_masks[0, j].sum())
    a, b = policy(batch, images(1)), policy(batch, images(1), changed)
    assert torch.equal(a[:, : j + 1], b[:, : j + 1])
    assert not torch.allclose(a[:, j + 1:], b[:, j + 1:])


def test_node_encoder_sees_connectivity_and_image_matters():
    policy = make_policy()
    a, b = batch_of(chain_graph()), batch_of(rewired_graph())
    assert torch.equal(a.node_types, b.node_types) and torch.equal(a.tokens, b.tokens)
    assert not torch.allclose(policy(a, images(1)), policy(b, images(1)))
    assert not torch.allclose(policy(a, images(1, seed=0)), policy(a, images(1, seed=1)))


def test_padding_does_not_change_a_graphs_logits():
    policy = make_policy()
    alone = batch_of(tiny_graph())
    mixed = collate([GraphTokenizer(tiny_graph()).structure(), GraphTokenizer(chain_graph()).structure()],
                    [alone.tokens[0].tolist(), GraphTokenizer(chain_graph()).tokenize()])
    img = images(2)
    s = alone.num_slots
    torch.testing.assert_close(policy(alone, img[:1])[0], policy(mixed, img)[0, :s], atol=1e-5, rtol=1e-5)


def test_pretraining_loss_falls_when_fitting_a_batch():
    policy = make_policy().train()
    batch, img = batch_of(chain_graph(), tiny_graph(), seed=3), images(2)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = policy.loss(batch, img).item()
    for _ in range(60):
        opt.zero_grad()
        loss = policy.loss(batch, img)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_log_probs_match_logits_and_ignore_padding():
    policy, batch = make_policy(), batch_of(chain_graph(), tiny_graph())
    img = images(2)
    logp = policy.log_probs(batch, img)
    ref = torch.log_softmax(policy(batch, img), -1).gather(-1, batch.tokens[..., None])[..., 0]
    torch.testing.assert_close(logp[batch.slot_mask], ref[batch.slot_mask])
    assert (logp[~batch.slot_mask] == 0).all()


def test_value_network_starts_from_the_policy_with_a_fresh_head():
    policy = make_policy()
    value = ValueNetwork.from_policy(policy)
    for (name, p), (_, q) in zip(policy.trunk.state_dict().items(), value.trunk.state_dict().items()):
        assert torch.equal(p, q), name
    batch = batch_of(chain_graph(), tiny_graph())
    v = value(batch, images(2))
    assert v.shape == (2, batch.num_slots) and (v[~batch.slot_mask] == 0).all()
    assert value.head.weight.shape == (1, 96)
    # a zero head: V = 0 before the first update (a random one drowned the first advantages)
    assert (v == 0).all() and not value.head.weight.any() and not value.head.bias.any()
    # and it learns: one gradient step on a value loss moves the head off zero
    loss = ((value(batch, images(2)) - batch.slot_mask.float()) ** 2).sum()
    loss.backward()
    assert value.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [MaterialPolicy, ValueNetwork])
def test_checkpoints_round_trip_through_weights_only_torch_load(cls):
    torch.manual_seed(1)
    model = cls(make_policy().config).eval()
    buffer = io.BytesIO()
    torch.save(model.checkpoint(), buffer)
    buffer.seek(0)
    restored = cls.from_checkpoint(torch.load(buffer, weights_only=True)).eval()
    batch = batch_of(chain_graph())
    torch.testing.assert_close(model(batch, images(1)), restored(batch, images(1)), rtol=0, atol=0)
    assert all(isinstance(t, torch.Tensor) for t in model.state_dict().values())


def test_bad_image_tokens_raise_clear_errors():
    policy, batch = make_policy(), batch_of(chain_graph())
    with pytest.raises(ValueError, match=r"expects \(B, 4, 16\)"):
        policy(batch, torch.zeros(1, 5, C))
    with pytest.raises(ValueError, match="2 images for a batch of 1"):
        policy(batch, images(2))
