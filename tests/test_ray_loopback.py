"""A local Ray started by a command binds loopback only: every socket of the GCS, raylet, dashboard agent,
runtime-env agent, driver and workers listens on 127.0.0.1, not on all interfaces.

The check looks at the real sockets (psutil) of the Ray processes that `matrl gen-data` and
`matrl serve-reward` start, in a fresh interpreter so that no other test's Ray is joined instead.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import asyncio, json, os, sys
import ray                      # imported first, as the commands do: init_ray must still bind loopback
import psutil                   # ray ships psutil

import learner.datagen
import matrl.jobs.reward
from matrl.cli import main

def sockets(stage):
    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            name, conns = proc.name(), proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.laddr and not c.raddr and c.status == psutil.CONN_NONE):
                found.append([name, c.laddr.ip, c.laddr.port])
    from ray._private import ray_constants
    report.append({"stage": stage, "node_ip": ray.util.get_node_ip_address(), "sockets": found,
                   "gcs": ray.get_runtime_context().gcs_address})

report = []
run_on_ray = learner.datagen._run_on_ray
def spying_run_on_ray(*args, **kwargs):
    sockets("gen-data")
    return run_on_ray(*args, **kwargs)
learner.datagen._run_on_ray = spying_run_on_ray

async def spying_serve(reward, pool, server):
    sockets("serve-reward")     # the driver's core worker listens like any worker's
matrl.jobs.reward.serve = spying_serve

command, out = sys.argv[1], sys.argv[2]
if command == "gen-data":
    assert main(["gen-data", "--graphs", "red_bricks", "--per-graph", "2", "--res", "64", "--shard-size", "2",
                 "--num-cpus", "1", "--out", out]) == 0
else:
    assert main(["serve-reward", "--port", "0", "--workers", "1"]) == 0
assert not ray.is_initialized()
from ray._private import ray_constants
report.append({"restored": [os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), ray_constants.ENABLE_RAY_CLUSTER]})
print("REPORT " + json.dumps(report))
"""


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def check_command_binds_loopback(command: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", SCRIPT, command, str(tmp_path / "data")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-4000:]
    stage, restored = json.loads(lines[-1].removeprefix("REPORT "))
    assert stage["stage"] == command
    names = {name for name, _, _ in stage["sockets"]}
    assert {"gcs_server", "raylet"} <= names, stage  # the check saw Ray's own processes
    public = [s for s in stage["sockets"] if not _is_loopback(s[1])]
    assert not public, f"{command}: Ray listens beyond loopback: {public}"
    assert stage["node_ip"] == "127.0.0.1" and stage["gcs"].startswith("127.0.0.1:"), stage
    # the single-machine switch is scoped to the local start: joining a cluster later is unaffected
    assert restored == {"restored": [None, True]}


def test_serve_reward_starts_a_local_ray_that_listens_on_loopback_only(tmp_path):
    check_command_binds_loopback("serve-reward", tmp_path)


@pytest.mark.slow
def test_gen_data_starts_a_local_ray_that_listens_on_loopback_only(tmp_path):
    check_command_binds_loopback("gen-data", tmp_path)


def test_every_local_ray_start_in_matrl_goes_through_init_ray():
    """No `ray.init(...)` in matrl/ outside ray_runtime.py; the commands that start Ray call init_ray."""
    direct, callers = [], set()
    for path in sorted((ROOT / "matrl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray":
                direct.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "init_ray":
                callers.add(str(path.relative_to(ROOT)))
    assert direct == ["matrl/jobs/ray_runtime.py"] * len(direct) and direct, direct
    assert {"matrl/commands/serve_reward.py", "matrl/commands/gen_data.py", "matrl/commands/pretrain.py",
            "matrl/jobs/demo.py"} <= callers
