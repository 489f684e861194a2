"""Load benchmark of the reward service against the raw executor + reward on the same cores.

For each worker count K (e.g. 1,2 here; 1,16,60 on a many-core host), back to back:
  control  the same K actors run small in-cache matmuls at once: per-process calls/s against K=1 is
           the host's ceiling for scaling single-threaded work (a workload free of memory traffic);
  raw      K RawScorer actors (1 torch thread each) call RewardWorker.score in a loop: no gRPC,
           no Arrow, no pool; samples/s = sum over actors of samples / busy seconds;
  service  `matrl serve-reward --workers K` (a subprocess on the same Ray cluster, resized in
           place between counts) and C = clients_per_worker x K clients on loopback sending
           requests of --samples samples back to back for --duration seconds.
Only one of the two runs at a time, so both use the same K cores.
A request's samples count towards the measurement window in proportion to the part of its
[send, answer] interval inside the window, so a few long requests do not quantise the rate.

    python benchmarks/reward_load.py                       # 1,2 workers, 60 s per point, 256²
    python benchmarks/reward_load.py --quick --json        # 10 s per point, 128²; JSON last
    python benchmarks/reward_load.py --workers 1,16,60 --address auto   # on a GPU host's cluster
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_PHOTO = REPO.parent / "shared" / "real_photos" / "bamboo-veawe" / "0.jpg"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts, ascending")
    p.add_argument("--clients-per-worker", type=int, default=2)
    p.add_argument("--samples", type=int, default=64, help="samples per request")
    p.add_argument("--duration", type=float, default=None, help="seconds per point (60; --quick 10)")
    p.add_argument("--res", type=int, default=None, help="executor resolution (256; --quick 128)")
    p.add_argument("--micro-batch", type=int, default=None, help="samples per executor call (RewardConfig default)")
    p.add_argument("--graph", default="red_bricks", help="library graph name or JSON path")
    p.add_argument("--address", default=None, help="existing Ray cluster; default: a local one")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary JSON as the last line")
    args = p.parse_args(argv)
    args.workers = sorted({int(k) for k in args.workers.split(",")})
    args.duration = args.duration or (10.0 if args.quick else 60.0)
    args.res = args.res or (128 if args.quick else 256)
    return args


# ---- workload ------------------------------------------------------------------------------------

def load_workload(args):
    """The graph, a few requests of `samples` random parameter sets, and the target image bytes."""
    from graph_executor.library import resolve_graph
    from graph_executor.sampling import sample_parameters
    from reward_service.worker import LIBRARY_PREFIX, ScoreRequest

    graph = resolve_graph(args.graph)
    structure = LIBRARY_PREFIX + graph.name if not args.graph.endswith(".json") else graph.to_json(indent=None)
    if REAL_PHOTO.is_file():
        target, target_name = REAL_PHOTO.read_bytes(), "real photo bamboo-veawe/0.jpg (512² JPEG)"
    else:
        target, target_name = _render_png(graph, args.res), f"render of {graph.name} defaults (PNG)"
    requests = []
    for variant in range(8):
        params = json.loads(json.dumps(sample_parameters(graph, args.samples, seed=variant), default=_plain))
        requests.append(ScoreRequest(structure=structure, target=target, param_sets=params,
                                     seeds=[variant * args.samples + i for i in range(args.samples)]))
    return graph, requests, target_name


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def _render_png(graph, res: int) -> bytes:
    from PIL import Image

    from graph_executor.executor import execute
    from graph_executor.render import render_flash

    image = render_flash(execute(graph, res=res))[0].permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- raw executor ----------------------------------------------------------------------------------

class RawScorer:
    """One RewardWorker on one core, called in a loop: the ceiling the service is compared with."""

    def __init__(self, reward_config):
        from reward_service.worker import RewardWorker

        self.worker = RewardWorker(reward_config)

    def warm(self, request) -> int:
        self.worker.score(request)
        return os.getpid()

    def run_until(self, requests, end_unix: float, first: int = 0) -> dict:
        samples = failures = 0
        busy = 0.0
        i = first
        while time.time() < end_unix:
            started = time.perf_counter()
            results = self.worker.score(requests[i % len(requests)])
            busy += time.perf_counter() - started
            samples += sum(r.ok for r in results)
            failures += sum(not r.ok for r in results)
            i += 1
        return {"samples": samples, "failures": failures, "busy_s": busy, "requests": i - first}

    @staticmethod
    def compute_loop(start_unix: float, end_unix: float) -> float:
        """Small in-cache matmuls (no memory traffic) between two wall-clock times; returns calls/s.
        How fast this runs with K processes busy at once, against one, is the host's own ceiling for
        the scaling of any single-threaded work (turbo limits, vCPUs sharing a physical core)."""
        import torch

        a, b, out = torch.rand(48, 48), torch.rand(48, 48), torch.empty(48, 48)
        while time.time() < start_unix:
            torch.mm(a, b, out=out)
        calls, started = 0, time.perf_counter()
        while time.time() < end_unix:
            for _ in range(100):
                torch.mm(a, b, out=out)
            calls += 100
        return calls / (time.perf_counter() - started)


def start_raw_scorers(reward_config, requests, count: int) -> list:
    """Warm RawScorer actors. They reserve no Ray CPU because they only run while the service
    is idle (points are measured raw, then service, per worker count), so both fit on K cores."""
    import ray

    scorer = ray.remote(num_cpus=0)(RawScorer)
    actors = [scorer.remote(reward_config) for _ in range(count)]
    ray.get([a.warm.remote(requests[0]) for a in actors])
    return actors


def measure_raw(actors, requests, duration: float) -> dict:
    import ray

    end = time.time() + duration
    runs = ray.get([a.run_until.remote(requests, end, first) for first, a in enumerate(actors)])
    return {"samples_per_s": sum(r["samples"] / r["busy_s"] for r in runs if r["busy_s"] > 0),
            "errors": sum(r["failures"] for r in runs), "requests": sum(r["requests"] for r in runs)}


# ---- service -----------------------------------------------------------------------------------------

@dataclass
class ClientLog:
    calls: list[tuple[float, float, int, float]] = field(default_factory=list)  # send, answer, ok, worker s
    errors: int = 0


ADMIN_TOKEN = secrets.token_hex(16)  # Resize is administrative: the server gets it in a file


def start_server(args, address: str, workers: int, reward_config) -> tuple[subprocess.Popen, str]:
    """The service subprocess with the raw scorers' RewardConfig (passed as a YAML file)."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="reward_load_") as config_dir:  # read once, at start-up
        config_file = Path(config_dir) / "reward.yaml"
        config_file.write_text(yaml.safe_dump(reward_config.model_dump(mode="json")))
        admin_file = Path(config_dir) / "admin_token"
        admin_file.write_text(ADMIN_TOKEN)
        cmd = [sys.executable, "-m", "matrl.cli", "serve-reward", "--port", "0", "--workers", str(workers),
               "--address", address, "--reward-config", str(config_file), "--admin-token-file", str(admin_file),
               "--chunk-samples", str(max(args.samples, 1))]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        deadline = time.monotonic() + 600
        for line in server.stdout:
            found = re.search(r"listening on (\S+):(\d+)", line)
            if found:
                return server, f"{found.group(1)}:{found.group(2)}"
            if time.monotonic() > deadline:
                break
        server.kill()
    raise RuntimeError(f"the reward server did not start: {' '.join(cmd)}")


def run_clients(address: str, requests, clients: int, duration: float) -> tuple[list[ClientLog], float, float]:
    """C clients send back to back. The window opens once every client has had one answer (the
    queues are then in steady state: at the very start every request counts as in service while
    most of them wait) and closes `duration` seconds later, when the clients stop sending."""
    from reward_service.client import RewardClient, RewardServiceError

    logs = [ClientLog() for _ in range(clients)]
    first_answers = threading.Semaphore(0)
    stop = threading.Event()

    def client_loop(index: int) -> None:
        with RewardClient(address, timeout_s=600) as client:
            i = index
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    results = client.score(requests[i % len(requests)])
                    worker_s = results[0].timings.get("request_total", 0.0) if results else 0.0
                    logs[index].calls.append((sent, time.monotonic(), sum(r.ok for r in results), worker_s))
                    logs[index].errors += sum(not r.ok for r in results)
                except RewardServiceError:
                    logs[index].errors += 1
                if i == index:
                    first_answers.release()
                i += 1

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for _ in range(clients):
        first_answers.acquire()
    start = time.monotonic()
    time.sleep(duration)
    end = time.monotonic()
    stop.set()
    for t in threads:
        t.join()
    return logs, start, end


def summarise(logs: list[ClientLog], start: float, end: float, workers: int) -> dict:
    """Samples/s inside [start, end] (each call's samples spread over its interval), latencies, and
    how busy the workers were (their own compute seconds per worker-second of the window: it does
    not depend on how much CPU other processes took, unlike the comparison with the raw phase)."""
    done = busy = 0.0
    latencies = []
    for log_ in logs:
        for sent, answered, ok, worker_s in log_.calls:
            share = max(0.0, min(answered, end) - max(sent, start)) / max(answered - sent, 1e-9)
            done += ok * share
            busy += worker_s * share
            latencies.append((answered - sent) * 1000.0)
    return {"samples_per_s": done / (end - start), "worker_busy": busy / (workers * (end - start)),
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
            "errors": sum(log_.errors for log_ in logs), "requests": len(latencies)}


def prime(address: str, requests, workers: int) -> None:
    """One small request per worker, concurrently, so every worker has compiled the graph and
    described the target before the clock starts (as the raw actors' warm-up call does)."""
    from reward_service.client import RewardClient

    small = [replace(requests[0], param_sets=requests[0].param_sets[:2], seeds=requests[0].seeds[:2])] * (2 * workers)
    with RewardClient(address, timeout_s=600) as client:
        threads = [threading.Thread(target=client.score, args=(r,)) for r in small]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def measure_compute_control(actors, seconds: float) -> float:
    """Mean calls/s per actor of RawScorer.compute_loop, all K actors at once."""
    import ray

    start = time.time() + 1.0
    return float(np.mean(ray.get([a.compute_loop.remote(start, start + seconds) for a in actors])))


def measure(args, address: str, reward_config, requests) -> tuple[dict[int, dict], dict[int, dict], dict[int, float]]:
    """Per worker count: a compute-bound control and the raw executor on K actors, then the service
    resized to K workers."""
    from reward_service.client import RewardClient

    raw, service, control = {}, {}, {}
    server, server_address = start_server(args, address, args.workers[0], reward_config)
    try:
        scorers = start_raw_scorers(reward_config, requests, max(args.workers))
        with RewardClient(server_address, timeout_s=600, admin_token=ADMIN_TOKEN) as admin:
            admin.wait_ready(600)
            for k in args.workers:
                control[k] = measure_compute_control(scorers[:k], min(5.0, args.duration))
                raw[k] = measure_raw(scorers[:k], requests, args.duration)
                log(f"raw      K={k}: {raw[k]['samples_per_s']:.2f} samples/s ({raw[k]['requests']} requests)")
                status = admin.resize(k, timeout_s=600)
                assert status["ready"] == k, status
                prime(server_address, requests, k)
                clients = args.clients_per_worker * k
                logs, start, end = run_clients(server_address, requests, clients, args.duration)
                service[k] = {"clients": clients, **summarise(logs, start, end, k)}
                log(f"service  K={k}, C={clients}: {service[k]['samples_per_s']:.2f} samples/s, "
                    f"p50 {service[k]['p50_ms']:.0f} ms, p99 {service[k]['p99_ms']:.0f} ms, "
                    f"worker busy {service[k]['worker_busy']:.3f}, errors {service[k]['errors']}")
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return raw, service, control


# ---- report -------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report(args, graph, target_name, raw, service, control) -> dict:
    rows = []
    for k in args.workers:
        ratio = service[k]["samples_per_s"] / raw[k]["samples_per_s"] if raw[k]["samples_per_s"] else float("nan")
        rows.append({"workers": k, "clients": service[k]["clients"],
                     "raw_samples_per_s": raw[k]["samples_per_s"], "samples_per_s": service[k]["samples_per_s"],
                     "service_over_raw": ratio, "worker_busy": service[k]["worker_busy"],
                     "p50_ms": service[k]["p50_ms"], "p99_ms": service[k]["p99_ms"],
                     "errors": service[k]["errors"] + raw[k]["errors"], "requests": service[k]["requests"],
                     "compute_control_per_process": control[k]})
    lo, hi = rows[0], rows[-1]

    def efficiency(key: str, row: dict = hi) -> float:
        if row["workers"] == lo["workers"] or not lo[key]:
            return float("nan")
        return (row[key] / row["workers"]) / (lo[key] / lo["workers"])

    print(f"reward service load: graph {graph.name} ({len(graph.nodes)} nodes) at {args.res}², target {target_name},"
          f" {args.samples} samples/request, micro-batch {args.micro_batch}, {args.duration:g} s per point,"
          f" {os.cpu_count()} CPUs")
    header = ("workers", "clients", "raw samples/s", "service samples/s", "service/raw", "worker busy",
              "p50 ms", "p99 ms", "errors", "control eff")
    print("  ".join(f"{h:>17}" for h in header))
    for r in rows:
        print("  ".join(f"{v:>17}" for v in (
            r["workers"], r["clients"], f"{r['raw_samples_per_s']:.2f}", f"{r['samples_per_s']:.2f}",
            f"{r['service_over_raw']:.3f}", f"{r['worker_busy']:.3f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
            r["errors"], f"{r['compute_control_per_process'] / lo['compute_control_per_process']:.3f}")))
    summary = {"samples_per_s": hi["samples_per_s"], "raw_executor_samples_per_s": hi["raw_samples_per_s"],
               "service_over_raw": hi["service_over_raw"], "worker_busy": hi["worker_busy"],
               "p50_ms": hi["p50_ms"], "p99_ms": hi["p99_ms"],
               "errors": sum(r["errors"] for r in rows), "scaling_efficiency": efficiency("samples_per_s"),
               "raw_scaling_efficiency": efficiency("raw_samples_per_s"), "workers": args.workers,
               "scaling_by_workers": {r["workers"]: {
                   "service": efficiency("samples_per_s", r), "raw": efficiency("raw_samples_per_s", r),
                   "compute_control": r["compute_control_per_process"] / lo["compute_control_per_process"]}
                   for r in rows[1:]},
               "micro_batch": args.micro_batch,
               "graph": graph.name, "res": args.res, "samples_per_request": args.samples,
               "duration_s": args.duration, "target": target_name, "cpus": os.cpu_count(),
               "machine": platform.processor() or platform.machine(), "per_workers": rows}
    print(f"scaling {lo['workers']}->{hi['workers']} workers: service {summary['scaling_efficiency']:.3f}, "
          f"raw {summary['raw_scaling_efficiency']:.3f}")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray
    import torch

    from reward_service.config import RewardConfig

    torch.set_num_threads(1)
    graph, requests, target_name = load_workload(args)
    reward_config = RewardConfig(res=args.res, **({} if args.micro_batch is None else {"micro_batch": args.micro_batch}))
    args.micro_batch = reward_config.samples_per_call
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        raw, service, control = measure(args, address, reward_config, requests)
    finally:
        ray.shutdown()
    summary = report(args, graph, target_name, raw, service, control)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
