"""Is an image (or a material) uninformative: non-finite, blank, or constant?

Used to reject random parameter draws and random structures, and to check the library.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graph_executor.executor import MaterialMaps, Plan
from graph_executor.ir import Graph
from graph_executor.render import render_flash

NON_FINITE = "non-finite"
BLANK = "blank"
CONSTANT = "constant"


@dataclass(frozen=True)
class DegeneracyConfig:
    """Thresholds on [0,1] images: mean outside [dark, bright] is blank; spatial std below min_std is constant."""

    dark: float = 0.02
    bright: float = 0.98
    min_std: float = 0.01


def _per_sample(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"expected images (B,C,H,W) or (C,H,W), got shape {tuple(images.shape)}")
    return images.float()


def _spatial_std(images: torch.Tensor) -> torch.Tensor:
    """Largest per-channel standard deviation over pixels, (B,)."""
    return images.flatten(2).std(2).amax(1)


def degeneracy_reasons(images: torch.Tensor, config: DegeneracyConfig = DegeneracyConfig()) -> list[str | None]:
    """Per image: NON_FINITE, BLANK, CONSTANT, or None when the image is informative."""
    images = _per_sample(images)
    finite = torch.isfinite(images).flatten(1).all(1)
    safe = torch.where(torch.isfinite(images), images, torch.zeros_like(images))
    mean = safe.flatten(1).mean(1)
    std = _spatial_std(safe)
    reasons: list[str | None] = []
    for ok, m, s in zip(finite.tolist(), mean.tolist(), std.tolist()):
        if not ok:
            reasons.append(NON_FINITE)
        elif m < config.dark or m > config.bright:
            reasons.append(BLANK)
        elif s < config.min_std:
            reasons.append(CONSTANT)
        else:
            reasons.append(None)
    return reasons


def is_degenerate(images: torch.Tensor, config: DegeneracyConfig = DegeneracyConfig()) -> torch.Tensor:
    """(B,) bool: True where an image is non-finite, blank or constant."""
    return torch.tensor([r is not None for r in degeneracy_reasons(images, config)], dtype=torch.bool)


def material_degeneracy(maps: MaterialMaps, rendered: torch.Tensor,
                        config: DegeneracyConfig = DegeneracyConfig()) -> list[str | None]:
    """Per sample: why a material is degenerate, or None.

    A material is degenerate when any map or its render is non-finite, when its render is blank,
    or when every visible map (basecolor, normal, roughness, metallic) is spatially constant. The
    render alone cannot show constancy: the flash falloff shades even a uniform material.
    """
    finite = maps.finite_per_sample().cpu() & torch.isfinite(rendered).flatten(1).all(1).cpu()
    render_reasons = degeneracy_reasons(rendered, config)
    varying = torch.zeros_like(finite)
    for name in ("basecolor", "normal", "roughness", "metallic"):
        t = getattr(maps, name).float()
        varying |= (_spatial_std(torch.nan_to_num(t)) >= config.min_std).cpu()
    reasons: list[str | None] = []
    for ok, render_reason, varies in zip(finite.tolist(), render_reasons, varying.tolist()):
        if not ok:
            reasons.append(NON_FINITE)
        elif render_reason == BLANK:
            reasons.append(BLANK)
        elif not varies:
            reasons.append(CONSTANT)
        else:
            reasons.append(None)
    return reasons


def material_ok(maps: MaterialMaps, rendered: torch.Tensor, config: DegeneracyConfig = DegeneracyConfig()
                ) -> torch.Tensor:
    """(B,) bool on the maps' device: True where `material_degeneracy` gives None, as tensor ops
    without a round trip to the host (online pre-training judges thousands of samples a second)."""
    finite = maps.finite_per_sample() & torch.isfinite(rendered).flatten(1).all(1)
    images = _per_sample(rendered)
    mean = torch.where(torch.isfinite(images), images, torch.zeros_like(images)).flatten(1).mean(1)
    varying = torch.zeros_like(finite)
    for name in ("basecolor", "normal", "roughness", "metallic"):
        varying |= _spatial_std(torch.nan_to_num(getattr(maps, name).float())) >= config.min_std
    return finite & (mean >= config.dark) & (mean <= config.bright) & varying


def graph_degeneracy(graph: Graph, param_sets=None, res: int = 64, seed: int = 0, device: str = "cpu",
                     config: DegeneracyConfig = DegeneracyConfig()) -> list[str | None]:
    """Execute and render `graph` for each parameter set (default: its own values) and judge each."""
    plan = Plan(graph)
    maps = plan.run(plan.stack(param_sets, device=device), res=res, seed=seed, device=device)
    return material_degeneracy(maps, render_flash(maps), config)
