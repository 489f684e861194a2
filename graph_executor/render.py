"""Flash renderer: a point light co-located with the camera above a planar sample (MATch/ProcMatRL setup)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from graph_executor.executor import MaterialMaps
from graph_executor.ops import normalize_channels


@dataclass(frozen=True)
class FlashConfig:
    """Plane of `size` world units centred under a camera+flash at `distance`; GGX with α = roughness²."""

    size: float = 1.0
    distance: float = 1.0
    intensity: float = math.pi
    gamma: float = 2.2


def render_flash(maps: MaterialMaps, config: FlashConfig = FlashConfig(),
                 light: torch.Tensor | None = None) -> torch.Tensor:
    """Render a batch of maps to sRGB images (B,3,H,W) in [0,1].

    `light` (B,3) places each sample's camera+flash at (x, y, height) in world units above the
    plane's centre (default: (0, 0, config.distance) for all); phone photos have the flash off
    centre and at varying heights, which moves the highlight and changes the falloff
    (`learner.augment` draws these per sample).
    """
    albedo = maps.basecolor.clamp(0, 1) ** config.gamma
    B, _, H, W = albedo.shape
    device = albedo.device
    n = normalize_channels(maps.normal * 2 - 1)
    c = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) / W - 0.5
    r = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) / H - 0.5
    px = (c * config.size).view(1, 1, 1, W)
    py = (-r * config.size).view(1, 1, H, 1)
    if light is None:
        to_light = torch.cat([(-px).expand(1, 1, H, W), (-py).expand(1, 1, H, W),
                              torch.full((1, 1, H, W), config.distance, device=device)], 1)
    else:
        if light.shape != (B, 3):
            raise ValueError(f"light positions must be ({B}, 3), got {tuple(light.shape)}")
        lx, ly, lz = (light[:, i].to(device, torch.float32).view(B, 1, 1, 1) for i in range(3))
        to_light = torch.cat([(lx - px).expand(B, 1, H, W), (ly - py).expand(B, 1, H, W),
                              lz.expand(B, 1, H, W)], 1)
    dist2 = (to_light ** 2).sum(1, keepdim=True)
    l = to_light / dist2.sqrt()
    n_dot_l = (n * l).sum(1, keepdim=True).clamp(min=0)
    roughness = maps.roughness.clamp(0, 1)
    alpha = (roughness ** 2).clamp(min=1e-3)
    a2 = alpha ** 2
    # v = l, so h = l: n·h = n·v = n·l and v·h = 1 (Fresnel reduces to F0).
    denom = n_dot_l ** 2 * (a2 - 1) + 1
    d = a2 / (math.pi * denom ** 2)
    k = alpha / 2
    g1 = n_dot_l / (n_dot_l * (1 - k) + k).clamp(min=1e-6)
    metallic = maps.metallic.clamp(0, 1)
    f0 = torch.lerp(torch.full_like(albedo, 0.04), albedo, metallic)
    specular = d * f0 * g1 * g1 / (4 * n_dot_l * n_dot_l).clamp(min=1e-6)
    diffuse = albedo * (1 - metallic) / math.pi
    radiance = (diffuse + specular) * config.intensity * n_dot_l / dist2
    return radiance.clamp(0, 1) ** (1.0 / config.gamma)
