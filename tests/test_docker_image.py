"""docker/Dockerfile without a Docker daemon: the base image carries the Ray that pyproject.toml
pins, the project is installed the way README.md says, the dependency layer's requirement list
is pyproject.toml's, and the offline-weights check it runs at build time works."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
README_INSTALL = 'pip install -e ".[dev]"'


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, backslash continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + "\n"
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def run_commands() -> list[str]:
    return [args for keyword, args in instructions(DOCKERFILE.read_text()) if keyword == "RUN"]


def test_dockerfile_parser_joins_continuations():
    parsed = instructions("# c\nFROM a:b\nRUN x \\\n    && y\nENV A=1 \\\n    B=2\n")
    assert parsed == [("FROM", "a:b"), ("RUN", "x \n    && y"), ("ENV", "A=1 \n    B=2")]


def test_base_image_is_rays_gpu_image_at_the_pinned_ray_and_python():
    (base,) = [args for keyword, args in instructions(DOCKERFILE.read_text()) if keyword == "FROM"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu", base)
    assert match, base
    pins = [d for d in pyproject()["project"]["dependencies"] if d.startswith("ray[")]
    assert pins and pins[0].endswith(f"=={match.group(1)}"), (pins, base)
    minimum = re.search(r">=3\.(\d+)", pyproject()["project"]["requires-python"]).group(1)
    assert int(match.group(2)) >= int(minimum)


def test_project_is_installed_as_readme_says_with_token_auth_on():
    assert README_INSTALL in (REPO / "README.md").read_text()
    runs = run_commands()
    assert runs.count(README_INSTALL) == 1, runs
    envs = " ".join(args for keyword, args in instructions(DOCKERFILE.read_text()) if keyword == "ENV")
    assert "RAY_AUTH_MODE=token" in envs
    copies = [args for keyword, args in instructions(DOCKERFILE.read_text()) if keyword == "COPY"]
    assert any(args.split()[-2:] == [".", "."] for args in copies), "the whole context (see .dockerignore)"


def test_dependency_layer_lists_exactly_pyprojects_requirements(tmp_path):
    (snippet,) = [r for r in run_commands() if "tomllib" in r]
    python_command = snippet.split(">")[0].replace("\n", "")
    argv = shlex.split(python_command)
    assert argv[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    out = subprocess.run([sys.executable, "-c", argv[2]], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    project = pyproject()["project"]
    assert [line for line in out if line] == project["dependencies"] + project["optional-dependencies"]["dev"]


def test_build_time_offline_weights_check_runs_here():
    (check,) = [r for r in run_commands() if "load_efficientnet_lite0" in r]
    argv = shlex.split(check.split("&&")[0].replace("\n", ""))
    assert argv[:2] == ["python", "-c"]
    subprocess.run([sys.executable, "-c", argv[2]], cwd=REPO, check=True, timeout=300,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_dockerignore_keeps_what_the_install_needs_and_drops_the_venv():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "runs"} <= ignored
    needed = {"pyproject.toml", pyproject()["project"]["readme"]}
    needed |= {p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert not needed & ignored
    for name in needed:
        assert (REPO / name).exists(), f"pyproject.toml needs {name}, which this checkout lacks"

