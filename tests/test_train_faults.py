"""Fault tolerance of `matrl train` under real kills on a local Ray: reward workers dying (one, or half
the pool at once, as when a node is lost) and the reward gRPC server restarting. Each run must finish
every iteration with every trajectory, and count the event in summary.json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import ray

from matrl.cli import main
from tests.test_train_job import init_checkpoint, job_args, role_pids  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def _kill_reward_workers(out, count: int, after_file, killed: list) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not after_file.exists():
        time.sleep(0.2)
    time.sleep(1.0)
    while time.monotonic() < deadline and len(role_pids(out, "reward")) < count:
        time.sleep(0.2)
    for pid in role_pids(out, "reward")[:count]:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


@pytest.mark.parametrize("kill", [1, 2], ids=["one-reward-worker", "half-the-pool"])
def test_reward_workers_killed_mid_run(cluster, init_checkpoint, tmp_path, kill):
    out = tmp_path / f"reward{kill}"
    killed: list = []
    marker = out / "metrics.jsonl"
    killer = threading.Thread(target=_kill_reward_workers, args=(out, kill, marker, killed), daemon=True)
    killer.start()
    assert main(job_args(init_checkpoint, out, 20, "--set", "validation.every=0", "--set", "reward.workers=4",
                         "--set", "reward.num_cpus=0.5")) == 0
    killer.join(5)
    assert len(killed) == kill
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 20 and summary["trajectories"] == 20 * 8  # every trajectory scored
    events = summary["events"]
    assert events["reward_retries"] + events["reward_restarts"] >= 1, events
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert min(m["reward_workers"] for m in lines) >= 4 - kill
    assert lines[-1]["reward_workers"] == 4, [m["reward_workers"] for m in lines]  # the pool was refilled
    assert events["reward_restarts"] >= kill, events


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "matrl.cli", "serve-reward", "--port", str(port), "--workers", "1",
                             "--res", "64"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"serve-reward did not start: {proc.stdout.read()[-2000:]}")


def test_reward_server_restart_mid_run(cluster, init_checkpoint, tmp_path):
    port = _free_port()
    server = _serve(port)
    out = tmp_path / "restart"
    restarted: list = []

    def restart():
        marker = out / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(2.0)
        restarted.append(_serve(port))

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        assert main(job_args(init_checkpoint, out, 4, "--set", "validation.every=0", "--reward-address",
                             f"127.0.0.1:{port}")) == 0
        thread.join(60)
        assert restarted, "the server was never restarted"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["iterations"] == 4 and summary["trajectories"] == 32
    finally:
        for proc in [server, *restarted]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
