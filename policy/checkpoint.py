"""Checkpoints of the policy: safetensors weights, a JSON config, and the trainer state for resuming.

A checkpoint is a directory:

    model.safetensors    the policy's tensors (no pickle; safe to load from anywhere)
    config.json          {"format", "kind", "policy": PolicyConfig (with its vocabulary), "encoder",
                          "train": the run's config, "epoch", "step", "metrics"}
    trainer_state.pt     optimizer, LR schedule and RNG states (only needed to resume training)

It is written to a temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint where `latest_checkpoint` would find it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from policy.model import MaterialPolicy, PolicyConfig

FORMAT = "matrl.checkpoint/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer_state.pt"
_CHECKPOINT_DIR = re.compile(r"^(?:epoch|step)_(\d{4,})$")  # epoch_NNNN (stored data), step_NNNNNNNN (online)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or of another kind; the message names the path."""


@dataclass
class CheckpointInfo:
    path: Path
    policy: PolicyConfig
    encoder: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def epoch_dir(run_checkpoints: str | Path, epoch: int) -> Path:
    return Path(run_checkpoints) / f"epoch_{epoch:04d}"


def step_dir(run_checkpoints: str | Path, step: int) -> Path:
    """Checkpoint directory of an online run (no epochs: one every `train.eval_every` steps)."""
    return Path(run_checkpoints) / f"step_{step:08d}"


def save_checkpoint(path: str | Path, policy: MaterialPolicy, *, encoder: dict[str, Any] | None = None,
                    train: dict[str, Any] | None = None, epoch: int = 0, step: int = 0,
                    metrics: dict[str, float] | None = None, trainer_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing one already at `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt", "matrl": FORMAT})
        config = {"format": FORMAT, "kind": "material_policy", "policy": policy.config.to_dict(),
                  "encoder": encoder or {}, "train": train or {}, "epoch": epoch, "step": step,
                  "metrics": metrics or {}}
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, default=str))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    config_path, weights = path / CONFIG, path / WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it needs {CONFIG} and {WEIGHTS}")
    data = json.loads(config_path.read_text())
    if data.get("format") != FORMAT or data.get("kind") != "material_policy":
        raise CheckpointError(f"{config_path}: format {data.get('format')!r} / kind {data.get('kind')!r}, "
                              f"expected {FORMAT!r} / 'material_policy'")
    return CheckpointInfo(path=path, policy=PolicyConfig.from_dict(data["policy"]), encoder=data["encoder"],
                          train=data["train"], epoch=data["epoch"], step=data["step"], metrics=data["metrics"])


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> tuple[MaterialPolicy, CheckpointInfo]:
    """The policy stored at `path` (every tensor must match its config exactly) and its info."""
    info = read_checkpoint_info(path)
    policy = MaterialPolicy(info.policy)
    state = load_file(Path(path) / WEIGHTS, device=str(device))
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return policy.to(device), info


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    file = Path(path) / TRAINER_STATE
    if not file.is_file():
        raise CheckpointError(f"{path} holds no {TRAINER_STATE}: it cannot resume training")
    return torch.load(file, map_location="cpu", weights_only=True)


def latest_checkpoint(run_checkpoints: str | Path) -> Path | None:
    """The complete checkpoint of the highest epoch (or step, for an online run) under a run's
    checkpoint directory, if any."""
    root = Path(run_checkpoints)
    if not root.is_dir():
        return None
    epochs = sorted((int(m.group(1)), p) for p in root.iterdir()
                    if (m := _CHECKPOINT_DIR.match(p.name)) and (p / CONFIG).is_file())
    return epochs[-1][1] if epochs else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
