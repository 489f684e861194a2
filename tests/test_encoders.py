"""Image encoders: pretrained weights really loaded, token grids, frozen, never silently random."""

from __future__ import annotations

import pytest
import torch

from graph_executor.ir import parse_graph
from policy.batching import collate
from policy.encoders import EfficientNetLite0Encoder, OpenClipEncoder, WeightsUnavailable
from policy.model import MaterialPolicy, PolicyConfig
from policy.tokenizer import GraphTokenizer

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def effnet():
    return EfficientNetLite0Encoder()


def chelsea() -> torch.Tensor:
    return torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255


def test_efficientnet_weights_classify_a_known_image(effnet):
    assert int(effnet.classify(chelsea()).argmax(1)) == 285  # ImageNet "Egyptian cat"


def test_efficientnet_tokens_are_a_frozen_7x7_grid(effnet):
    effnet.train()
    assert not effnet.training and not any(p.requires_grad for p in effnet.parameters())
    out = effnet(chelsea())
    assert out.tokens.shape == (1, 49, 1280) and out.pooled.shape == (1, 1280)
    assert not out.tokens.requires_grad
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    assert (effnet.num_tokens, effnet.token_dim) == (49, 1280)


def test_efficientnet_encoder_feeds_the_policy(effnet):
    graph = parse_graph({"nodes": {"n": {"type": "perlin_fbm"}, "out": {"type": "output", "inputs": {"height": "n"}}}})
    tok = GraphTokenizer(graph)
    policy = MaterialPolicy(PolicyConfig.for_encoder(effnet, tok.vocab))
    batch = collate([tok.structure()], [tok.tokenize()])
    loss = policy.loss(batch, effnet(chelsea()).tokens)
    loss.backward()
    assert policy.trunk.image_proj.weight.grad.abs().sum() > 0


def test_trainable_encoder_gets_gradients():
    encoder = EfficientNetLite0Encoder(trainable=True)
    assert encoder.training
    encoder(chelsea()).pooled.sum().backward()
    assert encoder.net.conv_stem.weight.grad is not None


def test_open_clip_never_builds_random_weights_silently():
    with pytest.raises(WeightsUnavailable, match="needs weights"):
        OpenClipEncoder("ViT-S-32")
    with pytest.raises(WeightsUnavailable, match="checkpoint not found: /no/such/clip.pt"):
        OpenClipEncoder("ViT-S-32", "/no/such/clip.pt")
    with pytest.raises(WeightsUnavailable, match="neither a checkpoint file nor a pretrained tag"):
        OpenClipEncoder("ViT-B-32", "no_such_tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        OpenClipEncoder("ViT-Nope", allow_random_init=True)


def test_open_clip_local_checkpoint_loads_the_saved_weights(tmp_path):
    import open_clip

    torch.manual_seed(0)
    source = open_clip.create_model("ViT-S-32", pretrained=None)
    path = tmp_path / "vit_s_32.pt"
    torch.save(source.state_dict(), path)
    encoder = OpenClipEncoder("ViT-S-32", path)
    for name, tensor in source.visual.state_dict().items():
        assert torch.equal(encoder.visual.state_dict()[name], tensor), name
    out = encoder(torch.rand(2, 3, 96, 96))
    assert out.tokens.shape == (2, 49, 384) and out.pooled.shape == (2, encoder.pooled_dim)
    assert (encoder.num_tokens, encoder.token_dim) == (49, 384)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_open_clip_random_init_only_when_asked():
    encoder = OpenClipEncoder("ViT-S-32", allow_random_init=True)
    assert encoder(torch.rand(1, 3, 224, 224)).tokens.shape == (1, 49, 384)
