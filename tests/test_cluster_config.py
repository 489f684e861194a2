"""cluster.yaml (and the GCP / on-prem variants in its comments) against Ray's own cluster schema
and config preparation, plus what matrl needs of it: node types with the custom resources its
actors ask for, token authentication on every node, the image of docker/Dockerfile."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
ROLE_RESOURCES = {"reward_cpu": "reward_worker", "rollout_gpu": "rollout_gpu", "learner_gpu": "learner_gpu"}
TRAIN_ROLES = ("reward", "rollout", "learner")  # train config sections with a `resources` dict


def load_cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def schema_validate(config: dict) -> None:
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))


def variants(text: str) -> dict[str, dict]:
    """The commented `--- variant: NAME` ... `--- end variant ---` blocks of cluster.yaml, parsed."""
    out = {}
    for match in re.finditer(r"^# --- variant: (\w+) -*\n(.*?)^# --- end variant ---", text, re.M | re.S):
        lines = [line[2:] if line.startswith("# ") else line[1:] for line in match.group(2).splitlines()]
        body = "\n".join(lines)
        # Prose lines before the YAML (on-prem explains itself) are comments once uncommented.
        start = re.search(r"^[a-z_]+:", body, re.M)
        out[match.group(1)] = yaml.safe_load(body[start.start():])
    return out


def apply_variant(config: dict, variant: dict, *, drop: tuple[str, ...] = ()) -> dict:
    """As cluster.yaml says: top-level keys replace; per node type, the keys given replace."""
    out = copy.deepcopy(config)
    for key, value in variant.items():
        if key == "available_node_types":
            for node_type, fields in value.items():
                assert node_type in out[key], f"variant names unknown node type {node_type}"
                out[key][node_type].update(copy.deepcopy(fields))
        else:
            out[key] = copy.deepcopy(value)
    for key in drop:
        out.pop(key, None)
    return out


def offered_resources(config: dict) -> dict[str, float]:
    """Custom resource -> largest amount one node type offers."""
    offered: dict[str, float] = {}
    for node in config["available_node_types"].values():
        for name, amount in node.get("resources", {}).items():
            if name not in ("CPU", "GPU", "memory", "object_store_memory"):
                offered[name] = max(offered.get(name, 0), amount)
    return offered


def unplaceable(train_config: dict, offered: dict[str, float]) -> list[str]:
    """`role.resources` requests of a train config that no cluster node type can satisfy."""
    problems = []
    for role in TRAIN_ROLES:
        asked = (train_config.get(role) or {}).get("resources") or {}
        for name, amount in asked.items():
            if offered.get(name, 0) < amount:
                problems.append(f"{role}.resources.{name}={amount} (cluster.yaml offers {offered.get(name, 0)})")
    return problems


def test_cluster_yaml_matches_rays_schema_and_preparation():
    config = load_cluster()
    schema_validate(config)
    # What `ray up` does before it touches the cloud: merge with the provider's defaults, check.
    validate_config(prepare_config(config))


def test_node_types_carry_the_custom_resources_of_matrls_roles():
    config = load_cluster()
    types = config["available_node_types"]
    assert set(types) == {"head", *ROLE_RESOURCES}
    assert config["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}, "no worker actor may land on the head"
    for node_type, resource in ROLE_RESOURCES.items():
        node = types[node_type]
        assert node["resources"].get(resource, 0) >= 1, (node_type, resource)
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert types["reward_cpu"]["resources"]["reward_worker"] == types["reward_cpu"]["resources"]["CPU"]
    assert types["rollout_gpu"]["resources"]["GPU"] >= 1
    assert types["learner_gpu"]["resources"]["GPU"] >= 1
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    # The comment table names each resource with the train config key that asks for it.
    text = CLUSTER_YAML.read_text()
    for role, resource in zip(TRAIN_ROLES, ROLE_RESOURCES.values()):
        assert re.search(rf"{role}\.resources:\s+\{{{resource}: 1\}}", text), (role, resource)


def test_every_node_starts_ray_with_token_auth_and_gets_the_token():
    config = load_cluster()
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token ray start" in command
        assert "0.0.0.0" not in command, "the dashboard stays on loopback, reached via `ray dashboard`"
        assert "--metrics-export-port=" in command
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def test_image_is_the_projects_at_its_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    image = load_cluster()["docker"]["image"]
    assert image.rsplit(":", 1)[1] == version, f"cluster.yaml image {image} != project version {version}"
    assert f"docker build -f docker/Dockerfile -t {image} ." in (REPO / "docker" / "Dockerfile").read_text()


@pytest.mark.parametrize("name", ["gcp", "local"])
def test_commented_variants_validate(name):
    text = CLUSTER_YAML.read_text()
    found = variants(text)
    assert set(found) == {"gcp", "local"}
    config = load_cluster()
    if name == "gcp":
        variant = apply_variant(config, found["gcp"])
        assert variant["provider"]["type"] == "gcp"
        schema_validate(variant)
        validate_config(prepare_config(variant))
        assert offered_resources(variant) == offered_resources(config) | {"reward_worker": 88}
    else:
        # Ray's local provider has one node type of its own: the variant says to delete ours.
        variant = apply_variant(config, found["local"], drop=("available_node_types", "head_node_type"))
        assert variant["provider"]["type"] == "local"
        schema_validate(variant)
        prepared = prepare_config(variant)
        validate_config(prepared)
        assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == 3
        starts = " ".join(variant["head_start_ray_commands"] + variant["worker_start_ray_commands"])
        for resource in ROLE_RESOURCES.values():
            assert resource in starts, f"on-prem start commands never advertise {resource}"


def test_schema_check_catches_a_broken_config():
    config = load_cluster()
    config["available_node_types"]["reward_cpu"]["resources"]["reward_worker"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        schema_validate(config)
    config = load_cluster()
    del config["available_node_types"]["rollout_gpu"]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        schema_validate(config)


def test_train_presets_ask_only_for_resources_the_cluster_offers():
    offered = offered_resources(load_cluster())
    assert unplaceable({"reward": {"resources": {"reward_worker": 1}}}, offered) == []
    assert unplaceable({"rollout": {"resources": {"rollout_gpus": 1}}}, offered) == [
        "rollout.resources.rollout_gpus=1 (cluster.yaml offers 0)"]
    presets = sorted((REPO / "matrl" / "configs").glob("train_*.yaml"))
    if not presets:
        pytest.skip("no bundled train presets in this checkout")
    for path in presets:
        assert unplaceable(yaml.safe_load(path.read_text()) or {}, offered) == [], path.name
