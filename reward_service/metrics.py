"""Appearance metrics: Gram texture term, L*a*b* colour term, the reward, and an LPIPS-style distance."""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

from reward_service.backbones import Backbone, build_backbone
from reward_service.config import MetricConfig


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices F·Fᵀ/(H·W) of features (B,C,H,W) -> (B,C,C)."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def resize_images(images: torch.Tensor, res: int) -> torch.Tensor:
    """Bicubic, antialiased resize to res² (as ProcMatRL), clamped back to [0,1]."""
    if images.shape[-2:] == (res, res):
        return images
    return F.interpolate(images, size=(res, res), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def pooled_lab(images: torch.Tensor, pool: int) -> torch.Tensor:
    """L*a*b* (L in 0..100) of sRGB images average-pooled by `pool`."""
    return kornia.color.rgb_to_lab(F.avg_pool2d(images, kernel_size=pool, stride=pool))


@dataclass
class Descriptor:
    """What the reward compares: per-stage Gram matrices and the pooled L*a*b* image.

    `features` (per-stage maps) are kept only when asked, for the LPIPS-style evaluation distance.
    """

    grams: list[torch.Tensor]
    lab: torch.Tensor
    features: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.lab.shape[0]

    def select(self, index: torch.Tensor | slice) -> "Descriptor":
        return Descriptor([g[index] for g in self.grams], self.lab[index],
                          None if self.features is None else [f[index] for f in self.features])

    @staticmethod
    def cat(parts: list["Descriptor"]) -> "Descriptor":
        feats = None if any(p.features is None for p in parts) else \
            [torch.cat(fs) for fs in zip(*(p.features for p in parts))]
        return Descriptor([torch.cat(gs) for gs in zip(*(p.grams for p in parts))],
                          torch.cat([p.lab for p in parts]), feats)


class AppearanceMetric:
    """The paper's appearance reward (Eq. 5–6) on a pluggable pretrained backbone."""

    def __init__(self, config: MetricConfig = MetricConfig(), backbone: Backbone | None = None):
        self.config = config
        self.backbone = backbone or build_backbone(config.backbone, config.weights, config.download,
                                                   config.allow_unweighted)
        info = self.backbone.info
        scales = config.stage_scales or info.stage_scales
        if len(scales) != len(info.stage_channels):
            raise ValueError(f"{info.name} has {len(info.stage_channels)} stages, got {len(scales)} stage_scales")
        self.stage_scales = torch.tensor(scales, dtype=torch.float32)
        self.lab_weights = torch.tensor(config.lab_weights, dtype=torch.float32).view(1, 3, 1, 1)
        self.lpips_name = f"lpips_{info.short_name}"

    def describe(self, images: torch.Tensor, keep_features: bool = False, grad: bool = False,
                 autocast: torch.dtype | None = None) -> Descriptor:
        """Descriptor of sRGB images (B,3,H,W) in [0,1], any size (resized to image_res).

        `grad=True` keeps the autograd graph back to `images` (the reward as a loss,
        `matrl.infer.refine`). `autocast` (e.g. torch.bfloat16) runs the backbone's convolutions at
        that precision; the resize, the Gram matrices and the L*a*b* term stay float32 (features are
        cast back first).
        """
        with torch.set_grad_enabled(grad):
            images = resize_images(images.float(), self.config.image_res)
            with torch.autocast(images.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                feats = self.backbone.stages(images)
            if autocast is not None:
                feats = [f.float() for f in feats]
            return Descriptor([gram(f) for f in feats], pooled_lab(images, self.config.lab_pool),
                              feats if keep_features else None)

    def stage_gram_l1(self, pred: Descriptor, target: Descriptor) -> torch.Tensor:
        """Mean per-element Gram L1 per stage, (B, stages); a target of batch 1 broadcasts."""
        return torch.stack([(p - t).abs().flatten(1).mean(1) for p, t in zip(pred.grams, target.grams)], 1)

    def terms(self, pred: Descriptor, target: Descriptor) -> dict[str, torch.Tensor]:
        """The reward's terms per sample: `gram` (scaled, stage-averaged) and `lab` (weighted L*a*b* L1)."""
        gram_term = (self.stage_gram_l1(pred, target) * self.stage_scales).mean(1)
        lab_term = ((pred.lab - target.lab).abs() * self.lab_weights).mean(dim=(1, 2, 3))
        return {"gram": gram_term, "lab": lab_term}

    def reward(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return 1.0 - (self.config.lambda_gram * terms["gram"] + self.config.lambda_lab * terms["lab"])

    def score(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reward and terms of images `pred` (B,3,H,W) against `target` (1 or B,3,H,W)."""
        terms = self.terms(self.describe(pred), self.describe(target))
        return self.reward(terms), terms

    def lpips_style(self, pred: Descriptor, target: Descriptor) -> torch.Tensor:
        """LPIPS-style distance: unit-normalise each pixel's channel vector per stage, mean squared difference
        over channels and pixels, averaged over stages. Unlike LPIPS there are no learned per-channel
        linear heads (uniform weights), so it is a perceptual *feature* distance, not calibrated LPIPS."""
        if pred.features is None or target.features is None:
            raise ValueError("lpips_style needs descriptors made with keep_features=True")
        dists = []
        for p, t in zip(pred.features, target.features):
            p = p / (p.norm(dim=1, keepdim=True) + 1e-10)
            t = t / (t.norm(dim=1, keepdim=True) + 1e-10)
            dists.append(((p - t) ** 2).sum(1).mean(dim=(1, 2)))
        return torch.stack(dists, 1).mean(1)

    def evaluate(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation metrics per sample: reward, its terms, per-stage Gram L1 and the LPIPS-style distance."""
        p, t = self.describe(pred, keep_features=True), self.describe(target, keep_features=True)
        terms = self.terms(p, t)
        out = {"reward": self.reward(terms), **terms, self.lpips_name: self.lpips_style(p, t)}
        for i, col in enumerate(self.stage_gram_l1(p, t).unbind(1)):
            out[f"gram_l1_stage{i}"] = col
        return out
