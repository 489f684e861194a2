"""A real local Ray head for tests: `ray start --head` as a cluster operator runs it.

`start_ray_head()` starts `ray start --head --block` in its own session, on free ports, with the
dashboard (Jobs API) and the node's Prometheus metrics endpoint, token authentication on, and
everything bound to 127.0.0.1; it yields a `RayHead` and stops that process tree at exit. The
`ray_head` fixture in conftest.py wraps it (one head per test module).

What it does and why (Ray 2.60, checked on this machine):

- Ports: every port that `ray start` would otherwise take from a fixed default (GCS 6379, Ray
  Client 10001, dashboard 8265, dashboard agent 52365, worker ports 10002-19999...) gets a free
  one, so it never collides with other clusters on the machine.
- Loopback: `ray start` rewrites `--node-ip-address 127.0.0.1` to the host's routable address.
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is Ray's own single-machine switch: the node IP is then
  127.0.0.1 and the GCS, raylet, agents and dashboard listen on loopback only.
- Token authentication: `ray start` turns it on only if `RAY_AUTH_MODE=token` is set or a token
  already exists (`ray.init()` generates one in ~/.ray/auth_token). The head gets its own fresh
  token in a file: `RAY_AUTH_MODE=token` + `RAY_AUTH_TOKEN_PATH` (precedence: `RAY_AUTH_TOKEN`,
  then `RAY_AUTH_TOKEN_PATH`, then ~/.ray/auth_token). A submitter must carry the same token:
  `RayHead.env` has it for the `ray` CLI, `RayHead.job_client()` sends it as
  `Authorization: Bearer <token>`. Without a token the Jobs API answers 401, with a wrong one 403.
- Metrics: `--metrics-export-port` serves Prometheus text at `http://127.0.0.1:PORT/metrics`
  (no token needed). A `ray.util.metrics` metric named `foo` appears as `ray_foo` with the tags
  given plus Component, NodeAddress, SessionName, WorkerId...; the core worker exports every
  `metrics_report_interval_ms` (set to 1000 here instead of Ray's 10000).

Stopping: SIGTERM to the `ray start --block` process (Ray stops its children), then SIGKILL to
whatever is left in the process group it leads. Never `ray stop`: that stops every Ray cluster
on the machine, not only this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180.0  # a cold head on a busy 2-core machine takes 10-40 s
STOP_TIMEOUT_S = 60.0
METRICS_REPORT_INTERVAL_MS = 1000

# Ports `ray start --head` would otherwise take from fixed defaults, by flag.
PORT_FLAGS = ("--port", "--dashboard-port", "--metrics-export-port", "--ray-client-server-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port")


def ray_executable() -> str:
    """The `ray` CLI of the interpreter running the tests (not whichever is first on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if not found:
        raise RuntimeError(f"no `ray` executable beside {sys.executable} or on PATH")
    return found


def with_interpreter_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with this interpreter's bin folder first on PATH, as an activated venv has it: a job's
    entrypoint (`python ...`, `matrl ...`) then runs in the environment the tests run in, also
    when they were started as `.venv/bin/python -m pytest` without activating."""
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, *(p for p in env.get("PATH", "").split(os.pathsep) if p != bindir)])
    return env


def _proc_net_ip(hex_ip: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order) -> text."""
    raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, len(hex_ip), 8))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def listening_addresses(pgid: int) -> set[str]:
    """IPs on which the processes of process group `pgid` accept TCP connections (Linux /proc).

    `start_ray_head` starts Ray in its own session, so its process group is all of that head's
    processes (GCS, raylet, dashboard, agents, workers) and nothing else on the machine.
    """
    inodes = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5: process group
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not ours to read
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    out.add(_proc_net_ip(fields[1].split(":")[0]))
    return out


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class RayHead:
    """A running local head: where it listens and how to talk to it with its token."""

    gcs_address: str          # 127.0.0.1:PORT, for `ray.init(address=...)` / `ray start --address`
    dashboard_url: str        # http://127.0.0.1:PORT, the Jobs API and the dashboard
    metrics_port: int         # the node's Prometheus endpoint (--metrics-export-port)
    token: str                # the cluster's auth token
    token_path: Path          # file holding it (RAY_AUTH_TOKEN_PATH)
    temp_dir: Path            # Ray's --temp-dir (session logs under session_latest/logs)
    process: subprocess.Popen = field(repr=False)
    log_path: Path = field(repr=False)

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus what a `ray` CLI submitter or driver needs: the token, the Jobs API
        address and the single-machine switch (without it, the client rewrites 127.0.0.1 in
        `--address` to the host's routable address, where this head does not listen)."""
        env = with_interpreter_on_path(dict(os.environ))
        env.pop("RAY_AUTH_TOKEN", None)  # would take precedence over the path
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                   RAY_ADDRESS=self.dashboard_url, RAY_API_SERVER_ADDRESS=self.dashboard_url,
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        return env

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def job_client(self):
        """A `JobSubmissionClient` for this head that sends its token."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.auth_headers)

    def http_get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, str]:
        """(status, body) of GET dashboard_url + path; HTTP errors are returned, not raised."""
        request = urllib.request.Request(self.dashboard_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def scrape_metrics(self, timeout: float = 10.0) -> str:
        """The node's Prometheus exposition text."""
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as response:
            return response.read().decode()

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample of metric `name` in one scrape (Ray prefixes `ray_`)."""
        from prometheus_client.parser import text_string_to_metric_families

        out = []
        for family in text_string_to_metric_families(self.scrape_metrics()):
            for sample in family.samples:
                if sample.name == name:
                    out.append((dict(sample.labels), float(sample.value)))
        return out

    def wait_for_job(self, submission_id: str, timeout: float = 300.0, poll_s: float = 1.0) -> str:
        """Final status name of a submitted job (SUCCEEDED, FAILED, STOPPED); raises on timeout."""
        from ray.job_submission import JobStatus

        client = self.job_client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.get_job_status(submission_id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                return status.value
            self.check_alive()
            time.sleep(poll_s)
        raise TimeoutError(f"job {submission_id} not finished after {timeout:.0f} s; logs:\n"
                           f"{client.get_job_logs(submission_id)[-4000:]}")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {self.process.returncode}; "
                               f"see {self.log_path}:\n{_tail(self.log_path)}")


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` process, then SIGKILL what is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # our own session: start_new_session=True
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def start_ray_head(*, num_cpus: int = 2, num_gpus: int = 0, resources: dict[str, float] | None = None,
                   extra_env: dict[str, str] | None = None,
                   start_timeout: float = START_TIMEOUT_S) -> Iterator[RayHead]:
    """Start a local Ray head (see module docstring), yield it, stop it and delete its files.

    `resources` are custom resources of the node (as on cluster.yaml's node types, e.g.
    {"reward_worker": 2}); `extra_env` goes to `ray start` and so to every Ray process and job.
    """
    # Short path: Ray's Unix sockets live under it and must stay below ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="matrl-ray-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))

    env = with_interpreter_on_path(dict(os.environ))
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_metrics_report_interval_ms=str(METRICS_REPORT_INTERVAL_MS),
               RAY_USAGE_STATS_ENABLED="0")
    env.update(extra_env or {})

    command = [ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", LOOPBACK, "--dashboard-host", LOOPBACK,
               "--include-dashboard", "true", "--temp-dir", str(temp_dir / "ray"),
               "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
               # 0/0: workers bind OS-chosen ports instead of the shared 10002-19999 range
               "--min-worker-port", "0", "--max-worker-port", "0"]
    for flag, port in ports.items():
        command += [flag, str(port)]
    if resources:
        command += ["--resources", json.dumps(resources)]

    log_path = temp_dir / "ray_start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    head = RayHead(gcs_address=f"{LOOPBACK}:{ports['--port']}",
                   dashboard_url=f"http://{LOOPBACK}:{ports['--dashboard-port']}",
                   metrics_port=ports["--metrics-export-port"], token=token, token_path=token_path,
                   temp_dir=temp_dir / "ray", process=process, log_path=log_path)
    try:
        _wait_ready(head, start_timeout)
        yield head
    finally:
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_ready(head: RayHead, timeout: float) -> None:
    """Until the Jobs API answers with the token and the metrics endpoint serves."""
    deadline = time.monotonic() + timeout
    last = "nothing answered"
    while time.monotonic() < deadline:
        head.check_alive()
        try:
            status, body = head.http_get("/api/jobs/", headers=head.auth_headers, timeout=5)
            if status == 200:
                head.scrape_metrics(timeout=5)
                return
            last = f"Jobs API answered {status}: {body[:200]}"
        except (OSError, urllib.error.URLError) as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.5)
    raise TimeoutError(f"local Ray head not ready after {timeout:.0f} s ({last}); "
                       f"see {head.log_path}:\n{_tail(head.log_path)}")
