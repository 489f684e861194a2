"""Photo-like augmentation: make synthetic flash renders look like the phone flash photos users bring.

The renderer's images are ideal: flash exactly above the centre at one height, perfect exposure
and white balance, no noise, no compression, perfectly sharp and axis-aligned. The real photos in
`../shared/real_photos` (21 materials x 9 flash positions) have the highlight anywhere within
about a third of the frame from the centre, exposure and colour casts that vary between shots,
sensor noise in the dark parts, JPEG blocks, slight defocus, and a hand-held framing. Each of
these has one switch in `AugmentConfig` and one pure function here:

=============== ========================================== ===============================
switch          what it does                               where
=============== ========================================== ===============================
`flash`         camera+flash (x, y, height) per sample     `flash_positions` -> render_flash
`exposure`      x 2^ev in linear light                     `exposure`
`white_balance` per-channel gains (green fixed)            `white_balance`
`defocus`       Gaussian blur, sigma per sample            `defocus` (kornia, both devices)
`geometry`      small rotation, zoom-in crop, shift        `rotate_crop` (affine grid)
`noise`         shot + read noise in linear light          `sensor_noise`
`jpeg`          JPEG at a random quality                   `jpeg` (OpenCV on CPU, kornia on GPU)
=============== ========================================== ===============================

Images are (B,3,H,W) sRGB in [0,1]; the photometric steps work in linear light (gamma 2.2, the
renderer's). Every random choice is drawn from the `torch.Generator` passed in, so a batch is a
function of the generator's seed. `augment(images, config, generator)` applies the enabled steps
in the order a camera would (optics, framing, sensor, encoder).

JPEG has two backends: `opencv` runs libjpeg itself (exact, CPU only: one imencode/imdecode per
image, ~1 ms at 256²) and `kornia` its differentiable re-implementation (DCT, quantisation tables,
4:2:0 chroma) as tensor ops that stay on the GPU. `auto` takes OpenCV for CPU tensors and kornia
for CUDA tensors; `tests/test_augment.py` checks the two agree (same images, same qualities).
Defocus uses kornia's Gaussian on both devices and is tested against OpenCV's GaussianBlur.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

GAMMA = 2.2


class AugmentConfig(BaseModel):
    """One switch per augmentation, and its range. Defaults follow what the real photos show."""

    model_config = ConfigDict(extra="forbid")

    flash: bool = Field(True, description="jitter the camera+flash position per sample")
    flash_offset: float = Field(0.3, ge=0, le=1, description="max |x|, |y| of the flash, in plane sizes: the "
                                "highlight in the real photos sits up to about a third of the frame off centre")
    flash_height: tuple[float, float] = Field((0.8, 1.5), description="camera+flash height range, in plane sizes")
    exposure: bool = True
    exposure_ev: float = Field(0.5, ge=0, description="exposure change in stops, uniform in [-ev, ev]")
    white_balance: bool = True
    white_balance_gain: float = Field(0.1, ge=0, lt=1, description="red and blue gains in [1-g, 1+g]")
    defocus: bool = True
    defocus_sigma: tuple[float, float] = Field((0.0, 1.0), description="Gaussian sigma in pixels at 256² "
                                                "(scaled with the resolution)")
    geometry: bool = True
    rotation_deg: float = Field(4.0, ge=0, le=45, description="rotation uniform in [-deg, deg]")
    crop_scale: tuple[float, float] = Field((0.8, 1.0), description="kept fraction of the side (zoom-in crop)")
    noise: bool = True
    # Noise and JPEG as they survive the resize to the training resolution: the photos are taken at
    # >= 1024², stored at 512² and fed at 256², which averages noise and blocks away. At twice these
    # strengths (shot 0.004, read 0.005, quality 60-95) each moved the renders' encoder features
    # further from the real photos' (benchmarks/augment_domain_gap.py, docs/benchmarks.md).
    noise_shot: tuple[float, float] = Field((0.0, 0.001), description="shot-noise variance per unit linear signal")
    noise_read: tuple[float, float] = Field((0.0, 0.0025), description="read-noise standard deviation (linear)")
    jpeg: bool = True
    jpeg_quality: tuple[int, int] = Field((85, 98), description="JPEG quality range")
    jpeg_backend: Literal["auto", "opencv", "kornia"] = "auto"

    @classmethod
    def off(cls) -> "AugmentConfig":
        """Every augmentation disabled: `augment` is the identity and the flash stays centred."""
        return cls(flash=False, exposure=False, white_balance=False, defocus=False, geometry=False,
                   noise=False, jpeg=False)

    def only(self, name: str) -> "AugmentConfig":
        """This config with every switch but `name` off (for measuring what each one buys)."""
        if name not in SWITCHES:
            raise ValueError(f"unknown augmentation {name!r}; switches are {list(SWITCHES)}")
        return self.model_copy(update={s: s == name for s in SWITCHES})

    @property
    def any_image_step(self) -> bool:
        return any(getattr(self, s) for s in SWITCHES if s != "flash")


SWITCHES = ("flash", "exposure", "white_balance", "defocus", "geometry", "noise", "jpeg")


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def flash_positions(n: int, config: AugmentConfig, generator: torch.Generator, distance: float = 1.0
                    ) -> torch.Tensor | None:
    """(n, 3) camera+flash positions for `graph_executor.render.render_flash`, or None when `flash`
    is off (the renderer's centred flash at `distance`)."""
    if not config.flash:
        return None
    xy = (torch.rand(n, 2, generator=generator, device=generator.device) * 2 - 1) * config.flash_offset
    height = _uniform(n, config.flash_height, generator) * distance
    return torch.cat([xy, height[:, None]], 1)


def to_linear(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(0, 1) ** GAMMA


def to_srgb(linear: torch.Tensor) -> torch.Tensor:
    return linear.clamp(0, 1) ** (1 / GAMMA)


def exposure(linear: torch.Tensor, ev: torch.Tensor) -> torch.Tensor:
    """Scale linear light by 2^ev per sample (ev (B,)); clipped highlights stay clipped."""
    return (linear * torch.exp2(ev).view(-1, 1, 1, 1)).clamp(0, 1)


def white_balance(linear: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Per-channel gains (B,3) in linear light."""
    return (linear * gains.view(-1, 3, 1, 1)).clamp(0, 1)


def defocus(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma (B,) in pixels; sigma 0 leaves the image as it is.
    The kernel spans 3 `max_sigma` (default: the largest sigma, which reads it back from the GPU)."""
    from kornia.filters import gaussian_blur2d

    radius = max(1, math.ceil(3 * (max_sigma if max_sigma is not None else float(sigma.max()))))
    safe = sigma.clamp(min=1e-3).to(images.dtype)
    blurred = gaussian_blur2d(images, 2 * radius + 1, torch.stack([safe, safe], 1), border_type="reflect")
    return torch.where((sigma > 0).view(-1, 1, 1, 1), blurred, images)


def rotate_crop(images: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
                ) -> torch.Tensor:
    """Rotate by `angle_deg`, keep a window `scale` of the side, shifted by `shift` (B,2) in [-1,1]
    of the room left; the window is shrunk until the rotated frame has no empty corners."""
    theta = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(theta), torch.sin(theta)
    fit = 1 / (cos.abs() + sin.abs())  # largest window that stays inside the image when rotated
    s = torch.minimum(scale, fit)
    room = (1 - s / fit).clamp(min=0)  # translation (in [-1,1] image units) that keeps the window inside
    t = shift * room[:, None]
    matrix = torch.stack([torch.stack([s * cos, -s * sin, t[:, 0]], 1),
                          torch.stack([s * sin, s * cos, t[:, 1]], 1)], 1).to(images.dtype)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sensor_noise(linear: torch.Tensor, shot: torch.Tensor, read: torch.Tensor, generator: torch.Generator
                 ) -> torch.Tensor:
    """Poisson-Gaussian noise in linear light: variance shot*x + read^2 per pixel (shot, read (B,))."""
    variance = shot.view(-1, 1, 1, 1) * linear + read.view(-1, 1, 1, 1) ** 2
    gauss = torch.randn(linear.shape, generator=generator, device=linear.device, dtype=linear.dtype)
    return (linear + variance.sqrt() * gauss).clamp(0, 1)


def jpeg(images: torch.Tensor, quality: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """JPEG-compress and decode each image at its quality (B,) (see the module docstring for backends)."""
    if backend == "auto":
        backend = "opencv" if images.device.type == "cpu" else "kornia"
    if backend == "kornia":
        from kornia.enhance import jpeg_codec_differentiable

        return jpeg_codec_differentiable(images.clamp(0, 1), quality.to(images.dtype)).clamp(0, 1)
    if backend != "opencv":
        raise ValueError(f"unknown JPEG backend {backend!r}; use auto, opencv or kornia")
    if images.device.type != "cpu":
        raise ValueError("the opencv JPEG backend runs on CPU tensors; use kornia (or auto) on a GPU")
    import cv2
    import numpy as np

    out = []
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for image, q in zip(pixels, quality.round().long().tolist()):
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(q)])
        if not ok:
            raise RuntimeError(f"OpenCV failed to JPEG-encode an image of shape {image.shape}")
        out.append(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy())
    decoded = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return decoded.to(images.dtype) / 255


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply the enabled image steps (everything but `flash`, which the renderer takes) to sRGB
    images (B,3,H,W) in [0,1]; the identity when all are off.

    Every step's per-sample parameters are drawn first, whether the step is on or not, so turning
    one augmentation off leaves the draws of the others unchanged (ablations compare like with like).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    n, res = images.shape[0], images.shape[-1]
    ev = _uniform(n, (-config.exposure_ev, config.exposure_ev), generator)
    g = config.white_balance_gain
    gains = torch.stack([_uniform(n, (1 - g, 1 + g), generator), torch.ones(n, device=generator.device),
                         _uniform(n, (1 - g, 1 + g), generator)], 1)
    sigma = _uniform(n, config.defocus_sigma, generator) * res / 256
    angle = _uniform(n, (-config.rotation_deg, config.rotation_deg), generator)
    scale = _uniform(n, config.crop_scale, generator)
    shift = torch.rand(n, 2, generator=generator, device=generator.device) * 2 - 1
    shot, read = _uniform(n, config.noise_shot, generator), _uniform(n, config.noise_read, generator)
    quality = _uniform(n, (float(config.jpeg_quality[0]), float(config.jpeg_quality[1])), generator)
    if not config.any_image_step:
        return images
    dtype = images.dtype
    linear = to_linear(images.float())
    if config.exposure:
        linear = exposure(linear, ev)
    if config.white_balance:
        linear = white_balance(linear, gains)
    if config.defocus:
        linear = defocus(linear, sigma, max_sigma=config.defocus_sigma[1] * res / 256)
    if config.geometry:
        linear = rotate_crop(linear, angle, scale, shift)
    if config.noise:
        linear = sensor_noise(linear, shot, read, generator)
    out = to_srgb(linear)
    if config.jpeg:
        out = jpeg(out, quality, config.jpeg_backend)
    return out.to(dtype)
