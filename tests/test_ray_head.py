"""The local Ray head fixture, proved the way a cluster user works: `ray job submit` with the
cluster's token, a custom `ray.util.metrics` Gauge read back from the node's Prometheus endpoint,
and a submitter without (or with a wrong) token turned away."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

from tests.ray_head import LOOPBACK, listening_addresses, ray_executable

# The job requests the custom resource a cluster.yaml reward node advertises, so the test also
# shows that `--resources` reaches the scheduler.
RAY_HEAD_OPTIONS = {"num_cpus": 2, "resources": {"reward_worker": 2}}

PROBE_JOB = textwrap.dedent('''
    """Sets a Gauge until the test has seen it in the scrape (it creates the release file)."""
    import os, sys, time
    import ray
    from ray.util.metrics import Gauge

    run, release = sys.argv[1], sys.argv[2]
    ray.init()

    @ray.remote(num_cpus=1, resources={"reward_worker": 1})
    def placed():
        return ray.get_runtime_context().get_node_id()

    node = ray.get(placed.remote())
    gauge = Gauge("matrl_probe", description="fixture probe", tag_keys=("run",))
    deadline = time.monotonic() + 240
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            sys.exit("never released")
        gauge.set(42.5, tags={"run": run})
        time.sleep(0.5)
    print(f"PROBE-DONE {run} on {node}")
''')


def test_ray_head_listens_on_loopback_only_and_reports_resources(ray_head):
    assert ray_head.gcs_address.startswith(f"{LOOPBACK}:")
    assert ray_head.dashboard_url.startswith(f"http://{LOOPBACK}:")
    assert int(ray_head.gcs_address.rsplit(":", 1)[1]) != 6379
    addresses = listening_addresses(ray_head.process.pid)
    assert addresses and addresses <= {LOOPBACK, f"::ffff:{LOOPBACK}"}, addresses
    # `ray status` (the GCS over gRPC, with the token) sees the node's custom resource once the
    # autoscaler monitor has published its first report.
    deadline = time.monotonic() + 120
    while True:
        out = subprocess.run([ray_executable(), "status", "--address", ray_head.gcs_address],
                             env=ray_head.env, capture_output=True, text=True, timeout=120)
        if (out.returncode == 0 and "reward_worker" in out.stdout) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-2000:]
    assert "0.0/2.0 reward_worker" in out.stdout, out.stdout


def test_jobs_api_refuses_missing_or_wrong_token(ray_head):
    status, _ = ray_head.http_get("/api/jobs/")
    assert status == 401
    status, _ = ray_head.http_get("/api/jobs/", headers={"Authorization": "Bearer " + "0" * 64})
    assert status == 403
    env = ray_head.env
    env.pop("RAY_AUTH_TOKEN_PATH")
    env["RAY_AUTH_TOKEN"] = "f" * 64
    out = subprocess.run([ray_executable(), "job", "list", "--address", ray_head.dashboard_url],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "token" in (out.stdout + out.stderr).lower()


def test_ray_job_submit_with_token_and_custom_metric_in_scrape(ray_head, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "probe_job.py").write_text(PROBE_JOB)
    run = uuid.uuid4().hex[:12]
    release = tmp_path / "release"
    submission_id = f"matrl-probe-{run}"
    # The same command line as README's `ray job submit --working-dir . -- matrl train ...`.
    out = subprocess.run(
        [ray_executable(), "job", "submit", "--no-wait", "--address", ray_head.dashboard_url,
         "--submission-id", submission_id, "--working-dir", str(job_dir),
         "--", "python", "probe_job.py", run, str(release)],
        env=ray_head.env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    client = ray_head.job_client()
    seen = []
    deadline = time.monotonic() + 240
    while not seen and time.monotonic() < deadline:
        seen = [(labels, value) for labels, value in ray_head.metric_samples("ray_matrl_probe")
                if labels.get("run") == run]
        if not seen:
            status = client.get_job_status(submission_id).value
            assert status in ("PENDING", "RUNNING"), client.get_job_logs(submission_id)[-3000:]
            time.sleep(1.0)
    try:
        assert seen, f"ray_matrl_probe{{run={run}}} never appeared in {ray_head.metrics_url}"
        labels, value = seen[0]
        assert value == 42.5
        assert labels["NodeAddress"] == LOOPBACK
    finally:
        release.touch()

    assert ray_head.wait_for_job(submission_id) == "SUCCEEDED", client.get_job_logs(submission_id)
    logs = client.get_job_logs(submission_id)
    assert f"PROBE-DONE {run}" in logs
    info = client.get_job_info(submission_id)
    assert info.entrypoint.startswith("python probe_job.py")
    assert (info.runtime_env or {}).get("working_dir", "").startswith("gcs://"), info.runtime_env


def test_listening_addresses_sees_a_wildcard_listener():
    code = ("import socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        proc.stdout.readline()
        assert listening_addresses(proc.pid) == {"0.0.0.0"}
    finally:
        proc.kill()
        proc.wait()
