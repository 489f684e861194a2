"""Pretrained CNN feature extractors for the appearance reward: images in [0,1] -> a list of stage features.

Each backbone carries `stage_scales`, the per-stage factors that bring its Gram L1 onto one common
scale (see docs/reward.md). VGG19's reproduce ProcMatRL's descriptor exactly: its L1 is the mean over
the concatenated pool1–pool5 Gram matrices, i.e. a per-stage mean weighted by C_s². EfficientNet-Lite0's
are measured on the real photographs with `benchmarks/reward_range.py --calibrate` so that each stage
contributes equally and a typical pair of *different* real materials has a Gram term of 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from policy.pretrained import VGG19_POOL_INDICES, build_vgg19_avgpool, load_efficientnet_lite0

EFFNET_STAGE_CHANNELS = (16, 24, 40, 112, 320)
VGG19_STAGE_CHANNELS = (64, 128, 256, 512, 512)
# Mean per-element Gram L1 between different real materials (21 materials x 9 light positions, less
# 10 blank captures; `python benchmarks/reward_range.py --calibrate`, 2026-11-21); scale_s = 0.25 / mean_s.
EFFNET_BETWEEN_MATERIAL_GRAM_L1 = (9.8861, 19.4395, 15.523, 8.9997, 3.5356)
GRAM_TARGET_BETWEEN_MATERIALS = 0.25


def _vgg_concat_scales() -> tuple[float, ...]:
    squares = [c * c for c in VGG19_STAGE_CHANNELS]
    return tuple(len(squares) * s / sum(squares) for s in squares)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    short_name: str
    stage_channels: tuple[int, ...]
    stage_scales: tuple[float, ...]


BACKBONES = {
    "efficientnet_lite0": BackboneInfo(
        "efficientnet_lite0", "effnet_lite0", EFFNET_STAGE_CHANNELS,
        tuple(GRAM_TARGET_BETWEEN_MATERIALS / m for m in EFFNET_BETWEEN_MATERIAL_GRAM_L1)),
    "vgg19": BackboneInfo("vgg19", "vgg19", VGG19_STAGE_CHANNELS, _vgg_concat_scales()),
}


class Backbone(torch.nn.Module):
    """A frozen CNN returning one feature map per stage for images (B,3,224,224) in [0,1]."""

    info: BackboneInfo

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d (in module order) into the conv.

    A BatchNorm with an activation (timm's BatchNormAct2d) is replaced by that activation. The frozen
    reward CNN then makes one memory pass less per convolution. Raises if a BatchNorm is left unfolded.
    """
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                activation = getattr(bn, "act", None)
                setattr(parent, bn_name, torch.nn.Identity() if activation is None else activation)
    left = [name for name, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if left:
        raise ValueError(f"BatchNorm layers not preceded by a conv, cannot fold: {left}")
    return module


class EfficientNetLite0Stages(Backbone):
    """timm tf_efficientnet_lite0 stages 0–4 (strides 2..32) with the packaged ImageNet weights.

    BatchNorms are folded into the convolutions and activations are channels-last: on one CPU core
    that is 1.3x faster at batch 1 and 1.6x at batch 16 (docs/benchmarks.md), and features equal
    the unfolded network's to float rounding.
    """

    info = BACKBONES["efficientnet_lite0"]

    def __init__(self, weights: str | None = None):
        super().__init__()
        net = load_efficientnet_lite0(weights).requires_grad_(False)
        self.net = fold_batchnorm(net).to(memory_format=torch.channels_last)

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ((images - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        return self.net.forward_intermediates(x, indices=[0, 1, 2, 3, 4], stop_early=True, intermediates_only=True)


class VGG19PoolStages(Backbone):
    """VGG19 pool1–pool5 outputs, max-pools replaced by average pools (the paper's descriptor)."""

    info = BACKBONES["vgg19"]

    def __init__(self, weights: str | None = None, download: bool = False, allow_unweighted: bool = False):
        super().__init__()
        self.features = build_vgg19_avgpool(weights, download=download, allow_unweighted=allow_unweighted)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG19_POOL_INDICES:
                out.append(x)
        return out


def build_backbone(name: str, weights: str | None = None, download: bool = False,
                   allow_unweighted: bool = False) -> Backbone:
    """The named backbone in eval mode; raises WeightsUnavailable rather than running random weights."""
    if name == "efficientnet_lite0":
        model: Backbone = EfficientNetLite0Stages(weights)
    elif name == "vgg19":
        model = VGG19PoolStages(weights, download=download, allow_unweighted=allow_unweighted)
    else:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    return model.eval()
