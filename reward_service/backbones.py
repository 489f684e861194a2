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

from matrl.pretrained import VGG19_POOL_INDICES, build_vgg19_avgpool, load_efficientnet_lite0

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


class EfficientNetLite0Stages(Backbone):
    """timm tf_efficientnet_lite0 stages 0–4 (strides 2..32) with the packaged ImageNet weights."""

    info = BACKBONES["efficientnet_lite0"]

    def __init__(self, weights: str | None = None):
        super().__init__()
        self.net = load_efficientnet_lite0(weights).requires_grad_(False)

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.net.forward_intermediates((images - 0.5) / 0.5, indices=[0, 1, 2, 3, 4],
                                             stop_early=True, intermediates_only=True)


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
