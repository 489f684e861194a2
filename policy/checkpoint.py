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

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from graph_executor.safe_json import JSONInputError, loads_json
from policy.model import MaterialPolicy, PolicyConfig

FORMAT = "matrl.checkpoint/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer_state.pt"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # the released policy (models/*/, MODEL_CARD.md)
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


def _policy_config(raw: Any, where: Path) -> PolicyConfig:
    """`PolicyConfig` from config.json's "policy" object; a CheckpointError names the key otherwise.

    Sizes are positive ints (layer counts may be 0), dropout a number in [0, 1), the vocabulary lists
    of strings: a config that passes builds a model, so the only remaining question is the tensors.
    """
    def fail(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{where}: policy.{key}: {problem}")

    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: 'policy' must be an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(PolicyConfig)}
    for key in raw:
        if key not in fields:
            raise fail(key, f"unknown key; a policy config has {sorted(fields)}")
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING:
                raise fail(name, "missing")
            continue
        value = raw[name]
        if name == "vocab":
            _check_vocab(value, fail)
        elif name == "dropout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise fail(name, f"expected a number in [0, 1), got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise fail(name, f"expected an integer, got {type(value).__name__}")
        elif value < (0 if name.endswith("layers") else 1) or value > _MAX_SIZE:
            raise fail(name, f"{value} is outside {0 if name.endswith('layers') else 1}..{_MAX_SIZE}")
    return PolicyConfig.from_dict(raw)


_MAX_SIZE = 1 << 20  # no size of the policy is anywhere near a million


def _check_vocab(vocab: Any, fail) -> None:
    if not isinstance(vocab, dict):
        raise fail("vocab", f"expected an object, got {type(vocab).__name__}")
    for key in ("node_types", "params"):
        if key not in vocab:
            raise fail(f"vocab.{key}", "missing")
        if not isinstance(vocab[key], list) or not all(isinstance(v, str) for v in vocab[key]):
            raise fail(f"vocab.{key}", "expected a list of strings")
    if isinstance(vocab.get("max_components"), bool) or not isinstance(vocab.get("max_components"), int) \
            or vocab["max_components"] < 1:
        raise fail("vocab.max_components", f"expected a positive integer, got {vocab.get('max_components')!r}")
    unknown = sorted(set(vocab) - {"node_types", "params", "max_components"})
    if unknown:
        raise fail(f"vocab.{unknown[0]}", "unknown key")


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """The checkpoint's config.json, validated; every problem is a CheckpointError naming the file and key."""
    path = Path(path)
    config_path, weights = path / CONFIG, path / WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it needs {CONFIG} and {WEIGHTS}")
    try:
        data = loads_json(config_path.read_bytes(), what=str(config_path), max_bytes=_MAX_CONFIG_BYTES)
    except OSError as err:
        raise CheckpointError(f"{config_path}: cannot read ({err.strerror or err})") from None
    except JSONInputError as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT or data.get("kind") != "material_policy":
        raise CheckpointError(f"{config_path}: format {data.get('format')!r} / kind {data.get('kind')!r}, "
                              f"expected {FORMAT!r} / 'material_policy'")
    if "policy" not in data:
        raise CheckpointError(f"{config_path}: missing key 'policy'")
    policy = _policy_config(data["policy"], config_path)
    fields = {}
    for key, kind, default in (("encoder", dict, {}), ("train", dict, {}), ("metrics", dict, {}),
                               ("epoch", int, 0), ("step", int, 0)):
        value = data.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise CheckpointError(f"{config_path}: {key}: expected "
                                  f"{'an object' if kind is dict else 'a non-negative integer'}, got {value!r:.60}")
        fields[key] = value
    return CheckpointInfo(path=path, policy=policy, **fields)


_MAX_CONFIG_BYTES = 16 << 20  # config.json holds the run's config and the vocabulary: kilobytes


def _check_weights(path: Path, policy: MaterialPolicy) -> None:
    """Every tensor of the policy is in the file with its shape, and the file holds nothing else."""
    file = path / WEIGHTS
    try:
        with safe_open(file, framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for a bad file
        raise CheckpointError(f"{file}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    expected = {key: tuple(t.shape) for key, t in policy.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{file}: tensor {k!r} has shape {shapes[k]}, but {CONFIG} builds {expected[k]} "
                              f"({len(wrong)} tensor(s) of the wrong shape)")
    if missing:
        raise CheckpointError(f"{file}: missing tensor(s) {missing[:3]} that {CONFIG} builds ({len(missing)} in all)")
    if unexpected:
        raise CheckpointError(f"{file}: unexpected tensor(s) {unexpected[:3]} that {CONFIG} does not build "
                              f"({len(unexpected)} in all)")


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> tuple[MaterialPolicy, CheckpointInfo]:
    """The policy stored at `path` and its info. The config is checked first, then every tensor's
    shape against a model built on the meta device (no memory), then the weights are loaded."""
    path = Path(path)
    info = read_checkpoint_info(path)
    try:
        with torch.device("meta"):
            skeleton = MaterialPolicy(info.policy)
    except (ValueError, TypeError, RuntimeError, AssertionError) as err:
        raise CheckpointError(f"{path / CONFIG}: the policy config does not build a model "
                              f"({type(err).__name__}: {err})") from None
    _check_weights(path, skeleton)
    policy = MaterialPolicy(info.policy)
    policy.load_state_dict(load_file(path / WEIGHTS, device=str(device)), strict=True)
    return policy.to(device), info


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    file = Path(path) / TRAINER_STATE
    if not file.is_file():
        raise CheckpointError(f"{path} holds no {TRAINER_STATE}: it cannot resume training")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{file}: cannot be loaded ({type(err).__name__}: {err})") from None


def released_checkpoint(models_dir: str | Path = MODELS_DIR) -> Path:
    """The released policy checkpoint: the one directory under `models/` that holds a checkpoint
    (config.json + model.safetensors; its MODEL_CARD.md says how it was trained). Raises
    CheckpointError saying what to pass when there is none or more than one.

        policy, info = load_policy(released_checkpoint())     # offline: the weights are in the repo
    """
    models_dir = Path(models_dir)
    found = sorted(p for p in models_dir.glob("*/") if (p / CONFIG).is_file()
                   and (p / WEIGHTS).is_file()) if models_dir.is_dir() else []
    if not found:
        raise CheckpointError(f"no released policy checkpoint under {models_dir}/: pass --checkpoint DIR, a "
                              "checkpoint directory written by `matrl pretrain` or `matrl train` (it holds "
                              "config.json and model.safetensors)")
    if len(found) > 1:
        raise CheckpointError(f"several checkpoints under {models_dir}/ ({', '.join(p.name for p in found)}): "
                              "pass --checkpoint DIR to choose one")
    return found[0]


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
