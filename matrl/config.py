"""The one config loader of every command: `--config NAME|PATH` and `--set key=value`.

A config is a YAML file validated by a pydantic model whose sections forbid unknown keys. `NAME`
is a bundled preset, `matrl/configs/<kind>_<NAME>.yaml` (`--config tiny` for `matrl train` reads
`train_tiny.yaml`); anything else is a path. `--set a.b.c=value` overrides one dotted key after
the file is read; the value is parsed as YAML (`--set optim.lr=3e-4`, `--set init=null`,
`--set workers.reward=8`). Every problem is a `ConfigError` whose message names the file, the
dotted key and what is wrong, so a command can print it as one line and exit before any work.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

MAX_OVERRIDE_CHARS = 4096  # a --set value longer than this is a mistake, not a setting
MAX_CONFIG_BYTES = 1 << 20  # a config file of more than 1 MiB is not a config
MAX_DEPTH = 32             # the deepest preset nests 3 levels; YAML's parser recurses per level
INT_RANGE = (-(1 << 63), (1 << 63) - 1)  # every integer setting ends in torch, numpy or Arrow as int64


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file or key."""


def presets(kind: str) -> list[str]:
    """Names of the bundled presets of one kind (`train` -> ['paper', 'tiny', ...])."""
    root = resources.files("matrl") / "configs"
    prefix = f"{kind}_"
    return sorted(p.name[len(prefix):-5] for p in root.iterdir() if p.name.startswith(prefix)
                  and p.name.endswith(".yaml"))


def config_path(kind: str, ref: str | Path) -> Path:
    """A YAML file path, or the bundled preset `<kind>_<ref>.yaml`."""
    path = Path(ref)
    if path.is_file():
        return path
    bundled = resources.files("matrl") / "configs" / f"{kind}_{ref}.yaml"
    if bundled.is_file():
        return Path(str(bundled))
    raise ConfigError(f"--config {str(ref)!r} is neither a file nor a bundled {kind} preset "
                      f"({', '.join(presets(kind)) or 'none'})")


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ('a.b', YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text[:80]!r} must read key=value or section.key=value")
    if len(raw) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"--set {key}: value of {len(raw)} characters (at most {MAX_OVERRIDE_CHARS})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        raise ConfigError(f"--set {key}: value is not valid YAML ({type(err).__name__})") from None
    check_values(value, f"--set {key}")
    return key, value


def check_values(data: Any, where: str) -> None:
    """Raise ConfigError naming the key for YAML values no setting can take: nesting deeper than
    MAX_DEPTH, an integer outside int64 (YAML reads `9` * 4000 as an int; torch and Arrow cannot), or a
    float that is not finite (`.inf`, `.nan`). Walks each container once, so YAML aliases cost nothing."""
    seen: set[int] = set()
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        key = ".".join(str(p) for p in path)
        name = f"{where}: {key}" if key else where
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
            digits = len(str(abs(value))) if value.bit_length() < 14000 else "thousands of"
            raise ConfigError(f"{name}: integer of {digits} digits does not fit in 64 bits")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: {value} is not a finite number")
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise ConfigError(f"{name}: nested deeper than {MAX_DEPTH} levels")
            if id(value) in seen:
                continue
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, (*path, k), depth + 1) for k, v in items)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    return dict(parse_override(text) for text in items)


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with each dotted key set (sections are created as needed)."""
    out = _copy(data)
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parents[:i + 1])} is a value, not a section")
            node = child
        node[leaf] = value
    return out


def _copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, within the limits of `check_values` and MAX_CONFIG_BYTES."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, got {type(data).__name__}")
    check_values(data, str(path))
    return data


def validation_message(err: ValidationError, source: str = "") -> str:
    """One line per problem: `source: dotted.key: message`."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source + ': ' if source else ''}{key + ': ' if key else ''}{msg}")
    return "; ".join(lines)


def build(model: type[M], data: Mapping[str, Any], source: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(validation_message(err, source)) from None


def load_config(model: type[M], kind: str, ref: str | Path | None, overrides: Mapping[str, Any] | Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> M:
    """Validate preset/file `ref` (or `base`, or the model's defaults) with `overrides` applied.

    `overrides` is a mapping of dotted keys or a list of `--set` strings.
    """
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    source = "defaults"
    data: dict[str, Any] = dict(base or {})
    if ref is not None:
        path = config_path(kind, ref)
        data = read_yaml(path)
        source = str(path)
    data = apply_overrides(data, overrides)
    check_values(data, source)
    return build(model, data, source)
