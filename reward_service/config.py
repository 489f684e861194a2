"""Typed configuration of the appearance metric and of a reward worker."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from graph_executor.executor import SUPPORTED_RES


CPU_PIXELS_PER_CALL = 256 * 256
CUDA_SAMPLES_PER_CALL = 1024


class MetricConfig(BaseModel):
    """R = 1 − (λ_gram·L_gram + λ_lab·L_lab) (paper Eq. 5–6, ProcMatRL's weights by default).

    L_gram = mean over stages of scale_s · mean|G_s(x) − G_s(y)|, G = F·Fᵀ/(H·W); `stage_scales`
    None takes the backbone's calibrated defaults (reward_service.backbones). L_lab = mean over
    pixels of (w_L|ΔL*| + w_a|Δa*| + w_b|Δb*|)/3 on images average-pooled by `lab_pool`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: Literal["efficientnet_lite0", "vgg19"] = "efficientnet_lite0"
    weights: str | None = Field(None, description="checkpoint path; None: the backbone's offline default")
    download: bool = Field(False, description="vgg19 only: let torchvision download ImageNet weights")
    allow_unweighted: bool = Field(False, description="vgg19 only, tests: accept random weights explicitly")
    image_res: int = Field(224, ge=32, le=1024)
    lambda_gram: float = Field(2.0, ge=0)
    lambda_lab: float = Field(0.05, ge=0)
    lab_weights: tuple[float, float, float] = (0.2, 1.0, 1.0)
    lab_pool: int = Field(16, ge=1)
    stage_scales: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> "MetricConfig":
        if self.image_res % self.lab_pool:
            raise ValueError(f"image_res {self.image_res} is not a multiple of lab_pool {self.lab_pool}")
        if any(w < 0 for w in self.lab_weights):
            raise ValueError(f"lab_weights must be non-negative, got {self.lab_weights}")
        if self.stage_scales is not None and any(s < 0 for s in self.stage_scales):
            raise ValueError(f"stage_scales must be non-negative, got {self.stage_scales}")
        return self


class RewardConfig(BaseModel):
    """A reward worker: executor resolution, caches, limits on targets, and the failure reward."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: MetricConfig = MetricConfig()
    res: int = Field(256, description="executor resolution; renders are resized to metric.image_res")
    device: str = "cpu"
    torch_threads: int | None = Field(1, ge=1, description="None leaves torch's thread count alone")
    retain_freed_memory: bool = Field(True, description="glibc: keep freed heap memory in the process "
                                                        "(reward_service.allocator); affects the whole process")
    micro_batch: int | None = Field(None, ge=1, description="samples per executor and CNN call (timeouts are "
                                    "checked between calls); None: `samples_per_call`'s per-device default")
    compile: bool = Field(False, description="run the executor's node functions and the renderer through "
                          "torch.compile (graph_executor.compiled): ~2-3x on a GPU once compiled, but every new "
                          "batch size compiles first (minutes), so chunks are padded to power-of-two sizes")
    cnn_autocast: Literal["off", "bfloat16"] = Field("off", description="autocast of the reward CNN's "
                                                     "convolutions (Gram matrices and L*a*b* stay float32): "
                                                     "rewards move by up to 6.4e-3, 1.1e-3 on average "
                                                     "(benchmarks/reward_precision.py, docs/reward.md)")
    tf32: bool = Field(True, description="CUDA: TF32 in the reward CNN's convolutions (cuDNN; PyTorch's own "
                       "default), ~1.6x float32's speed on an H200; rewards move by at most 5.5e-4. The "
                       "executor's matmuls stay float32")
    batched_validation: bool = Field(True, description="decode tokens and validate parameters for the whole "
                                     "request at once (a culprit is then found per sample); False: the per-sample "
                                     "reference path")
    failure_reward: float = -1.0
    default_timeout_s: float = Field(120.0, gt=0)
    plan_cache_size: int = Field(64, ge=1)
    target_cache_size: int = Field(256, ge=1)
    min_target_side: int = Field(16, ge=1)
    max_target_side: int = Field(4096, ge=1)
    max_target_bytes: int = Field(64 << 20, ge=1, description="largest encoded target image")
    target_store_bytes: int = Field(256 << 20, ge=1, description="descriptors of targets put under keys, "
                                    "per worker; least recently used keys are evicted beyond it")
    reject_blank_targets: bool = Field(True, description="a constant target (e.g. a failed capture) is an error")

    @property
    def samples_per_call(self) -> int:
        """`micro_batch`, else on CPU as many samples as make 256² pixels (1 at 256², 4 at 128²) and
        1,024 on CUDA. On CPU a call that small keeps its intermediates in the core's caches: with 60
        workers on a 64-core host, 1 sample per call at 256² scored 549 samples/s against 423 with 4
        (docs/benchmarks.md). A GPU needs large batches to be busy: on an H200 the eager executor
        renders the median library graph at 3,810 samples/s in batches of 256 and 7,298 in batches of
        2,048 (docs/benchmarks.md, "Reward on a GPU")."""
        if self.micro_batch is not None:
            return self.micro_batch
        if self.device.split(":")[0] == "cpu":
            return max(1, CPU_PIXELS_PER_CALL // (self.res * self.res))
        return CUDA_SAMPLES_PER_CALL

    @model_validator(mode="after")
    def _check(self) -> "RewardConfig":
        if self.res not in SUPPORTED_RES:
            raise ValueError(f"res {self.res} not supported by the executor; supported: {list(SUPPORTED_RES)}")
        if self.min_target_side > self.max_target_side:
            raise ValueError("min_target_side exceeds max_target_side")
        return self
