"""What the reward service's client and server share, and nothing heavy: request and result types,
constants of the wire, and the token file reader.

`reward_service.client` imports only this module, the Arrow codec and the generated gRPC code, so a
rollout worker or a script that scores remotely loads neither Ray nor torch nor the reward worker
(`import reward_service.client` is checked by a test to load no Ray).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # only for annotations: the client must not import torch
    import numpy as np
    import torch

LIBRARY_PREFIX = "lib:"
SERVICE_NAME = "matrl.reward.v1.RewardService"  # the proto's package + service (a test checks it)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

TargetImage = Union["np.ndarray", "torch.Tensor", bytes, str]


def read_token(path: str | Path) -> str:
    """The shared token in a file (whitespace stripped); an empty file is an error naming it."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


class RequestError(ValueError):
    """The request itself is malformed (not one of its samples); names the culprit field."""


@dataclass
class ScoreRequest:
    """One graph structure, N samples (parameter sets or token lists) with their seeds, one target.

    structure: graph JSON text, or "lib:<name>" for a bundled library graph.
    param_sets: per sample {node: {param: value}} overrides (missing values: the graph's), or
    tokens: per sample a token list decoded by policy.tokenizer.GraphTokenizer. Exactly one of the two.
    target: HxWx3 (or HxW, HxWx4) uint8 / float-in-[0,1] array or tensor, encoded PNG/JPEG bytes,
    or a key of an image put into the worker's target store.
    """

    structure: str
    seeds: list[int]
    target: Any  # TargetImage
    param_sets: list[dict] | None = None
    tokens: list[list[int]] | None = None
    request_id: str = ""
    timeout_s: float | None = None

    def __len__(self) -> int:
        return len(self.seeds)


@dataclass
class ScoreResult:
    reward: float
    terms: dict[str, float] = field(default_factory=dict)
    ok: bool = True
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
