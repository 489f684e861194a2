"""The two set-up commands of a fresh clone (`make demo`, `make test`), what CI runs, and the
headless-Chromium step, exercised with real `make` and bash against a fake interpreter and a
fake apt-get (a real bootstrap installs ~6 GB)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_INSTALL = 'pip install -e ".[dev]"'

FAKE_PYTHON = r'''#!{python}
"""Stands in for python3: `-c` is the version check, `-m venv DIR` makes a venv of logging fakes."""
import os, sys
from pathlib import Path
args = sys.argv[1:]
if args[:1] == ["-c"]:
    sys.exit(1 if os.environ.get("FAKE_OLD_PYTHON") else 0)
if args[:1] == ["-V"]:
    print("Python 3.10.12")
    sys.exit(0)
assert args[:2] == ["-m", "venv"], args
bindir = Path(args[2]) / "bin"
bindir.mkdir(parents=True)
for tool in ("python", "pip", "matrl"):
    script = bindir / tool
    script.write_text('#!/bin/sh\necho "{tool} $*" >> "$FAKE_LOG"\necho "${PATH%%:*}" > "$FAKE_LOG.path"\n'
                      'if [ "{tool}" = pip ]; then exit ${FAKE_PIP_RC:-0}; fi\n'.replace("{tool}", tool))
    script.chmod(0o755)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(f"venv {args[2]}\n")
'''


@pytest.fixture
def project(tmp_path):
    """A copy of the Makefile and pyproject.toml, a fake python3, and a log of what ran."""
    root = tmp_path / "clone"
    root.mkdir()
    shutil.copy(REPO / "Makefile", root)
    shutil.copy(REPO / "pyproject.toml", root)
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON.replace("{python}", sys.executable, 1))
    fake.chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    return root, fake, log


def make(root: Path, fake: Path, log: Path, *targets: str, env: dict | None = None, **variables: str):
    argv = ["make", "--no-print-directory", "-C", str(root), *targets, f"PYTHON={fake}",
            "ENSURE_CHROMIUM=echo chromium-step", *(f"{k}={v}" for k, v in variables.items())]
    # Not what an enclosing make (`make test` runs this very test) passes down to sub-makes.
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTEST_ARGS",
                              "DEMO_ARGS", "VENV", "PYTHON", "PIP_INSTALL", "ENSURE_CHROMIUM")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**inherited, "FAKE_LOG": str(log), **(env or {})})


def ran(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_make_test_bootstraps_once_and_reinstalls_when_pyproject_changes(project):
    root, fake, log = project
    first = make(root, fake, log, "test")
    assert first.returncode == 0, first.stdout + first.stderr
    assert ran(log) == ["venv .venv", "pip install -e .[dev]", "python -m pytest -q"]
    assert "chromium-step" in first.stdout
    # pytest runs as if the venv were activated: subprocesses find its matrl, ray and python
    assert Path(f"{log}.path").read_text().strip() == str(root / ".venv" / "bin")

    log.write_text("")
    again = make(root, fake, log, "test", PYTEST_ARGS="-m slow")
    assert again.returncode == 0
    assert ran(log) == ["python -m pytest -q -m slow"], "installed once, not on every run"

    log.write_text("")
    stamp = root / ".venv" / ".matrl-installed"
    later = stamp.stat().st_mtime + 5
    os.utime(root / "pyproject.toml", (later, later))
    changed = make(root, fake, log, "demo", DEMO_ARGS="--out runs/x")
    assert changed.returncode == 0
    assert ran(log) == ["pip install -e .[dev]", "matrl demo --out runs/x"]


def test_failed_install_is_retried_next_time(project):
    root, fake, log = project
    failed = make(root, fake, log, "demo", env={"FAKE_PIP_RC": "1"})
    assert failed.returncode != 0
    assert ran(log) == ["venv .venv", "pip install -e .[dev]"]  # the demo never ran
    log.write_text("")
    retried = make(root, fake, log, "demo")
    assert retried.returncode == 0
    assert ran(log) == ["pip install -e .[dev]", "matrl demo"]


def test_too_old_python_is_refused_with_the_fix(project):
    root, fake, log = project
    out = make(root, fake, log, "install", env={"FAKE_OLD_PYTHON": "1"})
    assert out.returncode != 0
    assert "needs Python >= 3.11" in out.stdout and "PYTHON=python3.11" in out.stdout
    assert ran(log) == []


def test_makefile_installs_as_readme_says():
    text = (REPO / "Makefile").read_text()
    assert re.search(r"^PIP_INSTALL \?= (.+)$", text, re.M).group(1) == README_INSTALL
    readme = (REPO / "README.md").read_text()
    assert README_INSTALL in readme


def test_ci_runs_readmes_test_command():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[-1] == "exec make test"


def test_readme_leads_with_the_two_commands_then_the_cluster():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings[:2] == ["Quick start", "Run on a cluster"], headings
    assert re.search(r"ray job submit [^\n]*--working-dir \. -- matrl train --config paper", readme)
    for needed in ("ray up cluster.yaml",
                   "ray dashboard cluster.yaml", "ray get-auth-token --generate", "RAY_AUTH_MODE=token"):
        assert needed in readme, needed


# --- tools/ensure_chromium.sh ------------------------------------------------------------------

def fake_bin(tmp_path: Path, *, uid: int, apt: bool, chromium: bool) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if chromium:
        (bindir / "chromium").write_text("#!/bin/sh\n")
    if apt:  # logs its arguments; `install` puts a chromium on PATH, as Debian's package does
        (bindir / "apt-get").write_text(
            '#!/bin/sh\necho "apt-get $*" >> "$FAKE_LOG"\n'
            f'case "$*" in *install*) printf "#!/bin/sh\\n" > {bindir}/chromium; /bin/chmod +x {bindir}/chromium;; esac\n')
    for tool in bindir.iterdir():
        tool.chmod(0o755)
    return bindir


def ensure_chromium(tmp_path: Path, bindir: Path):
    log = tmp_path / "log"
    log.touch()
    out = subprocess.run(["/bin/bash", str(REPO / "tools" / "ensure_chromium.sh")], capture_output=True,
                         text=True, timeout=60, env={"PATH": str(bindir), "FAKE_LOG": str(log)})
    return out, log.read_text().splitlines()


def test_chromium_present_means_nothing_to_do(tmp_path):
    out, apt_calls = ensure_chromium(tmp_path, fake_bin(tmp_path, uid=0, apt=True, chromium=True))
    assert (out.returncode, out.stdout, apt_calls) == (0, "", [])


def test_chromium_missing_is_installed_with_apt_as_root(tmp_path):
    bindir = fake_bin(tmp_path, uid=0, apt=True, chromium=False)
    out, apt_calls = ensure_chromium(tmp_path, bindir)
    assert out.returncode == 0
    assert apt_calls == ["apt-get install -y -qq --no-install-recommends chromium"]
    assert f"installed {bindir}/chromium" in out.stdout


@pytest.mark.parametrize("uid,apt", [(1000, True), (0, False)])
def test_chromium_install_skips_quietly_without_root_or_apt(tmp_path, uid, apt):
    out, apt_calls = ensure_chromium(tmp_path, fake_bin(tmp_path, uid=uid, apt=apt, chromium=False))
    assert out.returncode == 0 and apt_calls == []
    assert "HTML-report tests will skip" in out.stdout
