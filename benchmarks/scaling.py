"""Scaling of `matrl train` (issue 12 §4): trajectories/s against reward workers (CPU actors and GPU
actors of one pool), rollout workers and mode, with the per-iteration breakdown and the host's own
ceiling for CPU scaling.

Every point is a short run of the real job (`matrl.jobs.train.TrainJob`) on one local Ray: its own
reward pool behind gRPC on loopback, the replay buffer actor, rollout worker actors and the learner
actor, the preset's settings with the paper's PPO values (`--ppo paper`), targets rendered from
`--graphs` (default `brown_leather`, the median library graph of docs/benchmarks.md) at `--res`.
A point runs `--warmup` iterations, then `--iterations` measured ones; the table gives medians over
the measured iterations: trajectories/s, reward samples/s (trajectories / the reward phase), and
seconds of sampling, reward, learning (PPO update) and weight sync (publish + load), and the
learner's and rollout workers' idle fractions.

Batch sizes grow with the workers so that every reward worker has work in flight: targets per
iteration = max(--min-targets, --targets-per-cpu-reward x CPU reward workers + --targets-per-gpu-reward
x GPU reward workers), rounded up to a multiple of the rollout workers; buffer (trajectories per
iteration, which the learner takes whole) = targets x --samples-per-target; PPO minibatch = buffer /
--minibatch-divisor (the paper: 96 / 48 = 2).

Which points (--grid axes, the default): the CPU reward workers are swept with no GPU reward actor
(what the CPU scaling efficiency needs); GPU reward actors, rollout workers and modes are each swept
from the base point (largest CPU count, largest GPU count, largest rollout count, first mode), the
other values held. --grid full runs the whole product.

The compute-bound control: before each CPU-axis point, K spawned processes (K = that point's CPU
reward workers, one torch thread each) run 48x48 matmuls in L1 for --control-s seconds at once
(reward_load.RawScorer.compute_loop, the control of docs/benchmarks.md). A host whose per-core speed
drops as it fills slows them down; no single-threaded work can scale better. So

    reward scaling efficiency at K = (reward samples/s at K / at K0) / (control at K / control at K0)

with the control's total calls/s (K processes) and K0 the first count; 1.0 = as good as the host allows.

    python benchmarks/scaling.py --quick                       # CPU smoke run, 2 cores, a few minutes
    python benchmarks/scaling.py --reward-workers 4,8,16,28 --gpu-reward-workers 0,1,2 \\
        --rollout-workers 1,2 --modes sync,async --res 256 --device cuda --json OUT/scaling.json
        # nvidia-h200-x2 (tools/gpu/x2_scaling.sh)

--json OUT writes docs/scaling.json's keys (issue 12): host, date, trajectories_per_s_max,
gpu_reward_samples_per_s, reward_scaling_vs_control_min, learner_idle_async and, from a
benchmarks/rllib_baseline.py result given with --rllib-json, rllib/matrl trajectories/s and
validation rewards (else null), plus every point and the control under "points" and "control".
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # the project; train_harness and reward_load beside this script
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from train_harness import TINY_POLICY, median, policy_checkpoint, run_train_job  # noqa: E402

MEDIAN_GRAPH = "brown_leather"  # docs/benchmarks.md "Reward on a GPU": the median library graph
JSON_KEYS = ("host", "date", "trajectories_per_s_max", "gpu_reward_samples_per_s", "reward_scaling_vs_control_min",
             "learner_idle_async", "rllib_trajectories_per_s", "matrl_trajectories_per_s", "rllib_val_reward",
             "matrl_val_reward")
# per-iteration metrics of matrl.jobs.train, reported as medians over the measured iterations
BREAKDOWN = {"trajectories_per_s": "trajectories_per_s", "reward_samples_per_s": "reward_samples_per_s",
             "iteration_s": "iteration_s", "sample_s": "phase/sample_s", "reward_s": "phase/reward_s",
             "learn_s": "phase/learn_s", "weight_sync_s": "weight_sync_s",
             "learner_idle": "learner_idle_fraction", "rollout_idle": "rollout_idle_fraction"}


@dataclass(frozen=True)
class Point:
    cpu_reward: int
    gpu_reward: int
    rollout: int
    mode: str


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more counts >= 0")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward-workers", type=int_list, default=None,
                   help="CPU reward worker counts, the first the baseline K0 (4,8,16,28; --quick 1,2)")
    p.add_argument("--gpu-reward-workers", type=int_list, default=None,
                   help="GPU reward actors in the same pool (0,1,2 with a GPU; 0 on CPU)")
    p.add_argument("--rollout-workers", type=int_list, default=None, help="rollout worker counts (1,2; --quick 1)")
    p.add_argument("--modes", default=None, help="comma-separated sync,async (default both)")
    p.add_argument("--iterations", type=int, default=None, help="measured iterations per point (3; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="iterations before the measured ones (2; --quick 1)")
    p.add_argument("--res", type=int, default=None, help="target and reward resolution (256; --quick 64)")
    p.add_argument("--graphs", default=MEDIAN_GRAPH, help="comma-separated library graphs of the targets "
                                                          f"(default {MEDIAN_GRAPH}, the median library graph)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the learner and rollout workers run (auto: cuda when present)")
    p.add_argument("--config", default=None, help="matrl train preset or YAML the points start from (h200; "
                                                  "--quick tiny)")
    p.add_argument("--ppo", choices=("paper", "preset"), default=None,
                   help="PPO values: the paper preset's (train_paper.yaml) or --config's (paper; --quick preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train config key at every point (repeatable)")
    p.add_argument("--init", type=Path, default=None,
                   help="initial policy checkpoint (default: a freshly initialised policy of the default size; "
                        "--quick the tiny test policy); throughput does not need a trained one")
    p.add_argument("--samples-per-target", type=int, default=None, help="sequences per target (8; --quick 4)")
    p.add_argument("--min-targets", type=int, default=None, help="smallest targets per iteration (32; --quick 2)")
    p.add_argument("--targets-per-cpu-reward", type=int, default=None,
                   help="targets per iteration per CPU reward worker (4; --quick 2)")
    p.add_argument("--targets-per-gpu-reward", type=int, default=256,
                   help="targets per iteration per GPU reward actor (256)")
    p.add_argument("--minibatch-divisor", type=int, default=2, help="PPO minibatch = buffer / this (2, the paper)")
    p.add_argument("--gpu-share", type=float, default=0.5, help="GPU share of each GPU reward actor (0.5: two per "
                                                                "GPU; learner and rollout workers share another)")
    p.add_argument("--grid", choices=("axes", "full"), default="axes",
                   help="axes: sweep each list from the base point (CPU counts without GPU reward); full: product")
    p.add_argument("--control-s", type=float, default=None, help="seconds of the compute-bound control per K "
                                                                 "(5; --quick 2)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray (default: this host's; raised to what the largest point reserves)")
    p.add_argument("--work", type=Path, default=Path("runs/scaling"), help="run directories go here")
    p.add_argument("--host-label", default=None, help="host name for the JSON and the table (default: the node "
                                                      "name, CPU count and GPUs)")
    p.add_argument("--rllib-json", type=Path, default=None,
                   help="a benchmarks/rllib_baseline.py result (its rllib_baseline.json or --json line) for the "
                        "rllib_* / matrl_* keys")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write docs/scaling.json's keys here")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke size: reward workers 1,2, rollout 1, res 64, tiny policy, 2+1 iterations")
    args = p.parse_args(argv)
    q = args.quick
    args.reward_workers = args.reward_workers or ([1, 2] if q else [4, 8, 16, 28])
    args.rollout_workers = args.rollout_workers or ([1] if q else [1, 2])
    args.modes = [m.strip() for m in (args.modes or "sync,async").split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"sync", "async"}:
        p.error(f"--modes: {args.modes!r}; choose from sync, async")
    args.iterations = args.iterations or (2 if q else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    args.res = args.res or (64 if q else 256)
    args.graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    args.config = args.config or ("tiny" if q else "h200")
    args.ppo = args.ppo or ("preset" if q else "paper")
    args.samples_per_target = args.samples_per_target or (4 if q else 8)
    args.min_targets = args.min_targets or (2 if q else 32)
    args.targets_per_cpu_reward = args.targets_per_cpu_reward or (2 if q else 4)
    args.control_s = args.control_s or (2.0 if q else 5.0)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() and not q else "cpu"
    if args.gpu_reward_workers is None:
        args.gpu_reward_workers = [0, 1, 2] if args.device == "cuda" else [0]
    if args.device == "cpu" and max(args.gpu_reward_workers) > 0:
        p.error("--gpu-reward-workers above 0 needs --device cuda (GPU reward actors reserve a GPU)")
    if min(args.reward_workers) < 1 or min(args.rollout_workers) < 1:
        p.error("--reward-workers and --rollout-workers: counts >= 1 (the pool keeps at least one CPU worker)")
    if args.iterations < 1 or args.minibatch_divisor < 1:
        p.error("--iterations and --minibatch-divisor: >= 1")
    return args


def log(message: str) -> None:
    print(f"[scaling] {message}", file=sys.stderr, flush=True)


# ---- the points -------------------------------------------------------------------------------

def points(args) -> list[Point]:
    if args.grid == "full":
        return [Point(*p) for p in itertools.product(args.reward_workers, args.gpu_reward_workers,
                                                      args.rollout_workers, args.modes)]
    base = Point(max(args.reward_workers), max(args.gpu_reward_workers), max(args.rollout_workers), args.modes[0])
    chosen = [Point(k, 0, base.rollout, base.mode) for k in args.reward_workers]  # the CPU axis, no GPU reward
    chosen += [Point(base.cpu_reward, g, base.rollout, base.mode) for g in args.gpu_reward_workers]
    chosen += [Point(base.cpu_reward, base.gpu_reward, r, base.mode) for r in args.rollout_workers]
    chosen += [Point(base.cpu_reward, base.gpu_reward, base.rollout, m) for m in args.modes]
    return list(dict.fromkeys(chosen))  # in order, without repeats


def sizes(args, point: Point) -> dict:
    """Targets, buffer (trajectories per iteration) and minibatch of a point: they grow with the workers."""
    targets = max(args.min_targets, args.targets_per_cpu_reward * point.cpu_reward
                  + args.targets_per_gpu_reward * point.gpu_reward)
    targets = math.ceil(targets / point.rollout) * point.rollout
    buffer = targets * args.samples_per_target
    return {"targets": targets, "targets_per_worker": targets // point.rollout, "buffer": buffer,
            "minibatch": max(1, buffer // args.minibatch_divisor)}


def paper_ppo() -> dict:
    from matrl.config import config_path, read_yaml

    return {f"ppo.{k}": v for k, v in read_yaml(config_path("train", "paper"))["ppo"].items()}


def point_overrides(args, point: Point, init: Path) -> dict:
    from matrl.config import parse_overrides

    size = sizes(args, point)
    sets = paper_ppo() if args.ppo == "paper" else {}
    sets.update({
        "init": str(init), "iterations": args.warmup + args.iterations, "mode": point.mode,
        "checkpoint_every": 10**9, "validation.every": 0, "validation.targets": 2 if args.quick else 8,
        "targets.synthetic.graphs": args.graphs, "targets.synthetic.res": args.res, "reward.config.res": args.res,
        "rollout.workers": point.rollout, "rollout.targets_per_worker": size["targets_per_worker"],
        "rollout.sampling.samples_per_target": args.samples_per_target,
        "reward.workers": point.cpu_reward, "reward.gpu_workers": point.gpu_reward, "reward.num_gpus": args.gpu_share,
        "ppo.minibatch": size["minibatch"]})
    if args.device == "cuda":
        sets.update({"learner.device": "cuda", "learner.num_gpus": 0.5, "rollout.sampling.device": "cuda",
                     "rollout.num_gpus": 0.5 / point.rollout})
    else:
        sets.update({"learner.device": "cpu", "learner.num_gpus": 0.0, "rollout.sampling.device": "cpu",
                     "rollout.num_gpus": 0.0})
    sets.update(parse_overrides(args.set))
    return sets


def point_config(args, point: Point, init: Path):
    from matrl.config import load_config
    from matrl.jobs.train import TrainJobConfig

    return load_config(TrainJobConfig, "train", args.config, point_overrides(args, point, init))


def measure_point(args, point: Point, init: Path, run_dir: Path, fixed_cluster: bool) -> dict:
    config = point_config(args, point, init)
    name = f"cpu{point.cpu_reward}_gpu{point.gpu_reward}_r{point.rollout}_{point.mode}"
    summary, rows = run_train_job(config, run_dir / name, fixed_cluster)
    measured = [r for r in rows if r["iteration"] > args.warmup]
    if not measured:
        raise RuntimeError(f"{name}: no measured iteration (ran {summary['iterations']})")
    return {**asdict(point), **sizes(args, point), "iterations": len(measured),
            **{key: median([r.get(metric, math.nan) for r in measured]) for key, metric in BREAKDOWN.items()},
            "stale_dropped": sum(r.get("count/stale_dropped", 0) for r in measured),
            "reward_failures": sum(r.get("count/reward_failures", 0) for r in measured)}


# ---- the compute-bound control ---------------------------------------------------------------

def _control_process(seconds: float, barrier, results) -> None:
    """One control process: wait for the others, then the in-cache matmul loop for `seconds`."""
    import torch

    from reward_load import RawScorer

    torch.set_num_threads(1)
    RawScorer.compute_loop(0.0, time.time() + 0.2)  # warm: 0.2 s of the loop before the barrier
    barrier.wait()
    start = time.time() + 0.1
    results.put(RawScorer.compute_loop(start, start + seconds))


def control(workers: int, seconds: float) -> dict:
    """K processes of the control at once: total and per-process calls/s."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_control_process, args=(seconds, barrier, results)) for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        rates = [results.get(timeout=300 + seconds) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return {"workers": workers, "calls_per_s": sum(rates), "per_process": sum(rates) / len(rates)}


def reward_scaling(args, rows: list[dict], controls: dict[int, dict]) -> list[dict]:
    """Per CPU reward count of the CPU axis: reward samples/s, the control, and the efficiency against it."""
    rollout, mode = max(args.rollout_workers), args.modes[0]
    axis = {r["cpu_reward"]: r for r in rows if r["gpu_reward"] == 0 and r["rollout"] == rollout
            and r["mode"] == mode and not r.get("error")}
    k0 = args.reward_workers[0]
    if k0 not in axis or k0 not in controls:
        return []
    base, base_control = axis[k0]["reward_samples_per_s"], controls[k0]["calls_per_s"]
    out = []
    for k in args.reward_workers:
        if k not in axis or k not in controls:
            continue
        reward_ratio = axis[k]["reward_samples_per_s"] / base
        control_ratio = controls[k]["calls_per_s"] / base_control
        out.append({"workers": k, "reward_samples_per_s": axis[k]["reward_samples_per_s"],
                    "control_calls_per_s": controls[k]["calls_per_s"],
                    "control_per_process": controls[k]["per_process"], "reward_ratio": reward_ratio,
                    "control_ratio": control_ratio, "efficiency": reward_ratio / (k / k0),
                    "efficiency_vs_control": reward_ratio / control_ratio})
    return out


# ---- summary ----------------------------------------------------------------------------------

def host_label(args) -> str:
    if args.host_label:
        return args.host_label
    gpus = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpus = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - a label only
        pass
    return f"{platform.node()} ({os.cpu_count()} CPUs, {gpus})"


def rllib_keys(path: Path | None) -> dict:
    """rllib_/matrl_ trajectories/s and validation reward of a rllib_baseline.py result (means over
    repeated rows of a system), or nulls."""
    keys = {"rllib_trajectories_per_s": None, "matrl_trajectories_per_s": None, "rllib_val_reward": None,
            "matrl_val_reward": None}
    if path is None:
        return keys
    try:
        text = path.read_text().strip()
        data = json.loads(text.splitlines()[-1] if not text.startswith("{") else text)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--rllib-json {path}: not a rllib_baseline.py result ({err})") from None
    rows = data["rows"] if isinstance(data, dict) else data
    for system in ("rllib", "matrl"):
        mine = [r for r in rows if r.get("system") == system and not r.get("error")]
        if not mine:
            log(f"--rllib-json {path}: no {system!r} row; its keys stay null")
            continue
        for key, field in (("trajectories_per_s", "trajectories_per_s"), ("val_reward", "val_reward")):
            values = [r[field] for r in mine if isinstance(r.get(field), (int, float)) and math.isfinite(r[field])]
            keys[f"{system}_{key}"] = sum(values) / len(values) if values else None
    return keys


def finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def json_safe(value):
    """NaN and infinities (a metric an iteration did not have) as null: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summarise(args, rows: list[dict], scaling: list[dict], meta: dict) -> dict:
    ok = [r for r in rows if not r.get("error")]
    throughput = [r["trajectories_per_s"] for r in ok if math.isfinite(r["trajectories_per_s"])]
    gpu = [r["reward_samples_per_s"] for r in ok if r["gpu_reward"] > 0 and math.isfinite(r["reward_samples_per_s"])]
    effs = [s["efficiency_vs_control"] for s in scaling if s["workers"] != args.reward_workers[0]]
    asyncs = sorted((r for r in ok if r["mode"] == "async"), key=lambda r: -r["trajectories_per_s"])
    summary = {"host": meta["host"], "date": meta["date"],
               "trajectories_per_s_max": max(throughput) if throughput else None,
               "gpu_reward_samples_per_s": max(gpu) if gpu else None,
               "reward_scaling_vs_control_min": min(effs) if effs else None,
               "learner_idle_async": finite_or_none(asyncs[0]["learner_idle"]) if asyncs else None,
               **rllib_keys(args.rllib_json)}
    assert tuple(summary) == JSON_KEYS
    return {**summary, "points": rows, "reward_scaling": scaling, "meta": meta}


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def print_table(result: dict) -> None:
    meta = result["meta"]
    print(f"matrl train scaling: {','.join(meta['graphs'])} at {meta['res']}², preset {meta['config']} with "
          f"{meta['ppo']} PPO, {meta['samples_per_target']} samples per target, {meta['warmup']} warm-up + "
          f"{meta['iterations']} measured iterations per point (medians); host {meta['host']}, Ray CPUs "
          f"{meta['ray_cpus']}, device {meta['device']}, {meta['date']}")
    rows = result["points"]
    base = next((r["trajectories_per_s"] for r in rows if not r.get("error")), math.nan)
    header = ("mode", "rollout", "CPU rw", "GPU rw", "targets", "buffer", "minibatch", "traj/s", "x first",
              "reward samples/s", "iter s", "sample s", "reward s", "learn s", "weight sync s", "learner idle",
              "rollout idle")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        if r.get("error"):
            print(f"| {r['mode']} | {r['rollout']} | {r['cpu_reward']} | {r['gpu_reward']} | FAILED: {r['error']} |")
            continue
        cells = (r["mode"], r["rollout"], r["cpu_reward"], r["gpu_reward"], r["targets"], r["buffer"], r["minibatch"],
                 fmt(r["trajectories_per_s"]), fmt(r["trajectories_per_s"] / base), fmt(r["reward_samples_per_s"]),
                 fmt(r["iteration_s"]), fmt(r["sample_s"]), fmt(r["reward_s"]), fmt(r["learn_s"]),
                 fmt(r["weight_sync_s"], 3), fmt(r["learner_idle"]), fmt(r["rollout_idle"]))
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if result["reward_scaling"]:
        print("CPU reward scaling against the compute-bound control (K processes of in-cache matmuls at once)")
        header = ("K", "reward samples/s", "x K0", "control calls/s", "control per process", "control x K0",
                  "efficiency (vs K/K0)", "efficiency vs control")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for s in result["reward_scaling"]:
            cells = (s["workers"], fmt(s["reward_samples_per_s"]), fmt(s["reward_ratio"]),
                     fmt(s["control_calls_per_s"], 0), fmt(s["control_per_process"], 0), fmt(s["control_ratio"]),
                     fmt(s["efficiency"]), fmt(s["efficiency_vs_control"]))
            print("| " + " | ".join(str(c) for c in cells) + " |")
    print("summary: " + json.dumps({k: result[k] for k in JSON_KEYS}))


# ---- main -------------------------------------------------------------------------------------

def run(args) -> dict:
    import torch

    from matrl.jobs.ray_runtime import init_ray

    torch.set_num_threads(1)
    run_dir = args.work / datetime.now().strftime("run_%Y%m%d_%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    todo = points(args)
    init = args.init or policy_checkpoint(run_dir / "init", TINY_POLICY if args.quick else None)
    reserved = max(point_config(args, p, init).actor_cpus() for p in todo)
    ray_cpus = max(args.num_cpus or os.cpu_count() or 1, math.ceil(reserved))
    if ray_cpus > (os.cpu_count() or 1):
        log(f"the largest point reserves {reserved:g} CPUs: a local Ray of {ray_cpus} CPUs on "
            f"{os.cpu_count()} cores (oversubscribed)")
    info = init_ray(None, num_cpus=ray_cpus, log_to_driver=False)
    meta = {"host": host_label(args), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(), "ray_cpus": ray_cpus, "device": args.device, "config": args.config,
            "ppo": args.ppo, "graphs": args.graphs, "res": args.res, "samples_per_target": args.samples_per_target,
            "warmup": args.warmup, "iterations": args.iterations, "grid": args.grid, "init": str(init),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "run_dir": str(run_dir)}
    rows, controls = [], {}
    try:
        for point in todo:
            if point.gpu_reward == 0 and point.rollout == max(args.rollout_workers) and point.mode == args.modes[0] \
                    and point.cpu_reward not in controls:
                controls[point.cpu_reward] = control(point.cpu_reward, args.control_s)
                log(f"control K={point.cpu_reward}: {controls[point.cpu_reward]['calls_per_s']:.0f} calls/s "
                    f"({controls[point.cpu_reward]['per_process']:.0f} per process)")
            log(f"point {asdict(point)} {sizes(args, point)}")
            started = time.perf_counter()
            try:
                row = measure_point(args, point, init, run_dir, info["started"])
            except Exception as err:  # noqa: BLE001 - one point's failure must not lose the others
                log(f"{point} failed:\n{traceback.format_exc()}")
                row = {**asdict(point), **sizes(args, point), "error": f"{type(err).__name__}: {err}"[:500]}
            row["total_s"] = time.perf_counter() - started
            if not row.get("error"):
                log(f"  {row['trajectories_per_s']:.2f} trajectories/s, {row['reward_samples_per_s']:.1f} reward "
                    f"samples/s, iteration {row['iteration_s']:.2f}s ({row['total_s']:.0f}s with set-up)")
            rows.append(row)
            if args.json is not None:  # after every point: a run cut short by a time limit keeps what it measured
                write_json(args.json, {**summarise(args, rows, reward_scaling(args, rows, controls), meta),
                                       "partial": len(rows) < len(todo)})
    finally:
        if info["started"]:
            import ray

            ray.shutdown()
    return summarise(args, rows, reward_scaling(args, rows, controls), meta)


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(result), indent=1, default=str) + "\n")
    tmp.replace(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json is not None:
        write_json(args.json, {**result, "partial": False})
        log(f"wrote {args.json}")
    return 1 if any(r.get("error") for r in result["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())
