"""Appearance metric: Gram matrices, L*a*b* term, reward, LPIPS-style distance, backbones, real photos."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from graph_executor.executor import execute
from graph_executor.ir import parse_graph
from graph_executor.render import render_flash
from policy.pretrained import WeightsUnavailable, build_vgg19_avgpool, load_efficientnet_lite0
from reward_service.backbones import VGG19PoolStages, build_backbone, fold_batchnorm
from reward_service.config import MetricConfig
from reward_service.metrics import AppearanceMetric, gram


@pytest.fixture(scope="module")
def effnet():
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def metric(effnet):
    return AppearanceMetric(MetricConfig(), backbone=effnet)


@pytest.fixture(scope="module")
def texture():
    """A rendered procedural material (1,3,256,256): fBm-driven colour, roughness and normals."""
    graph = parse_graph({"name": "t", "nodes": {
        "h": {"type": "perlin_fbm", "params": {"scale": 6}},
        "lv": {"type": "levels", "inputs": {"in": "h"}, "params": {"out_low": 0.2, "out_high": 0.8}},
        "nrm": {"type": "normal_from_height", "inputs": {"height": "h"}},
        "out": {"type": "output", "inputs": {"basecolor": "lv", "normal": "nrm", "roughness": "h"}}}})
    return render_flash(execute(graph, res=256, seed=3))


def test_gram_matches_hand_computation_and_is_symmetric():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, C=2, 2, 2)
    g = gram(f)
    expected = torch.tensor([[1 + 4 + 9 + 16, 2 + 4], [2 + 4, 2]]) / 4.0
    assert torch.allclose(g[0], expected)
    big = gram(torch.randn(3, 7, 5, 6, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(big, big.transpose(1, 2))


def test_folded_efficientnet_stages_equal_the_unfolded_network(effnet, texture):
    reference = load_efficientnet_lite0()
    images = torch.cat([texture[..., 16:240, 16:240], torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))])
    with torch.no_grad():
        expected = reference.forward_intermediates((images - 0.5) / 0.5, indices=[0, 1, 2, 3, 4], stop_early=True,
                                                   intermediates_only=True)
        got = effnet.stages(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in effnet.modules())
    assert [f.shape for f in got] == [f.shape for f in expected]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-4 * float(e.abs().max()))


def test_fold_batchnorm_refuses_a_batchnorm_without_a_conv_before_it():
    lonely = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(3)).eval()
    with pytest.raises(ValueError, match="cannot fold"):
        fold_batchnorm(lonely)


def test_identical_images_score_one_with_zero_terms(metric, texture):
    reward, terms = metric.score(texture, texture)
    assert float(reward) == pytest.approx(1.0, abs=1e-6)
    assert float(terms["gram"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["lab"]) == pytest.approx(0.0, abs=1e-6)


def test_reward_decreases_as_perturbation_grows(metric, texture):
    noise = torch.randn(texture.shape, generator=torch.Generator().manual_seed(1))
    perturbed = torch.cat([(texture + s * noise).clamp(0, 1) for s in (0.02, 0.1, 0.3)]
                          + [(texture * 0.3).clamp(0, 1)])
    reward, terms = metric.score(perturbed, texture)
    assert torch.all(reward[:3].diff() < 0), reward
    assert torch.all(terms["gram"][:3].diff() > 0)
    assert float(reward.max()) < 1.0


def test_lab_weights_are_respected(effnet):
    dark = torch.full((1, 3, 64, 64), 0.3)
    light = torch.full((1, 3, 64, 64), 0.7)
    reddish = dark.clone()
    reddish[:, 0] = 0.6

    def lab_term(weights, a, b):
        m = AppearanceMetric(MetricConfig(lab_weights=weights), backbone=effnet)
        return float(m.terms(m.describe(a), m.describe(b))["lab"])

    only_l, only_ab = lab_term((1, 0, 0), dark, light), lab_term((0, 1, 1), dark, light)
    assert only_l > 10 and only_ab < 1e-3  # grey to grey: lightness only
    assert lab_term((0, 1, 1), dark, reddish) > 5  # a hue shift shows in a*b*
    mixed = lab_term((0.2, 1, 1), dark, reddish)
    assert mixed == pytest.approx(0.2 * lab_term((1, 0, 0), dark, reddish) + lab_term((0, 1, 1), dark, reddish),
                                  rel=1e-5)
    m = AppearanceMetric(MetricConfig(lambda_gram=0.0, lambda_lab=0.1), backbone=effnet)
    reward, terms = m.score(light, dark)
    assert float(reward) == pytest.approx(1 - 0.1 * float(terms["lab"]), rel=1e-6)


def test_lpips_style_distance_is_named_after_backbone(metric, texture):
    out = metric.evaluate(torch.cat([texture, texture.flip(-1) * 0.8]), texture)
    assert "lpips_effnet_lite0" in out
    assert float(out["lpips_effnet_lite0"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["lpips_effnet_lite0"][1]) > 0.05
    assert {f"gram_l1_stage{i}" for i in range(5)} <= set(out)
    assert float(out["reward"][0]) == pytest.approx(1.0, abs=1e-6)


def test_vgg19_needs_weights_unless_unweighted_is_explicit(tmp_path, monkeypatch, texture):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached download
    with pytest.raises(WeightsUnavailable):
        build_backbone("vgg19")
    with pytest.raises(WeightsUnavailable):
        build_vgg19_avgpool(tmp_path / "missing.pth")
    torch.manual_seed(0)
    net = build_vgg19_avgpool(allow_unweighted=True)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net)
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in net.state_dict().items()}, path)
    loaded = build_vgg19_avgpool(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))

    vgg = VGG19PoolStages(weights=str(path))
    stages = vgg.stages(torch.rand(1, 3, 224, 224))
    assert [s.shape[1] for s in stages] == [64, 128, 256, 512, 512]
    assert [s.shape[-1] for s in stages] == [112, 56, 28, 14, 7]
    # The VGG stage scales reproduce ProcMatRL's descriptor: L1 over the concatenated Gram matrices.
    m = AppearanceMetric(MetricConfig(backbone="vgg19"), backbone=vgg)
    a, b = m.describe(texture), m.describe(texture.flip(-2) * 0.7)
    concat = torch.cat([(ga - gb).flatten(1) for ga, gb in zip(a.grams, b.grams)], 1).abs().mean(1)
    assert float(m.terms(a, b)["gram"]) == pytest.approx(float(concat), rel=1e-4)
    assert m.lpips_name == "lpips_vgg19"


def test_metric_config_is_validated():
    with pytest.raises(ValueError):
        MetricConfig(lab_pool=15)
    with pytest.raises(ValueError):
        MetricConfig(lab_weights=(-1, 1, 1))
    with pytest.raises(ValueError):
        AppearanceMetric(MetricConfig(stage_scales=(1.0, 1.0)), backbone=build_backbone("efficientnet_lite0"))


def _photo(path: str) -> torch.Tensor | None:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    if int(pixels.max()) - int(pixels.min()) <= 1:  # the set holds a few all-black failed captures
        return None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().unsqueeze(0) / 255


def test_real_photos_same_material_other_light_beats_other_materials(metric, real_photos_dir):
    materials = sorted(os.listdir(real_photos_dir))
    materials = [m for m in materials if os.path.isdir(os.path.join(real_photos_dir, m))][::3]
    photos = {}
    for m in materials:
        views = [_photo(os.path.join(real_photos_dir, m, f"{pos}.jpg")) for pos in (0, 1, 3)]
        photos[m] = torch.cat([v for v in views if v is not None])
    desc = {m: metric.describe(p) for m, p in photos.items()}
    same, other = [], []
    for m in materials:
        target = desc[m].select(slice(0, 1))
        same.append(metric.reward(metric.terms(desc[m].select(slice(1, None)), target)))
        for n in materials:
            if n != m:
                other.append(metric.reward(metric.terms(desc[n], target)))
    same_mean, other_mean = float(torch.cat(same).mean()), float(torch.cat(other).mean())
    assert same_mean > other_mean + 0.3, (same_mean, other_mean)
