"""`matrl train` against RLlib PPO (new API stack, EnvRunners) on the same task, side by side in one run.

Both systems get, in this one invocation:
  * the same initial policy (`--init`, or the `pretrain:<preset>` bootstrap made once under --work);
  * the same PPO hyper-parameters and targets: the `matrl train` preset (`--config`, `--set`),
    mapped onto RLlib by `matrl.jobs.rllib_ppo.ppo_config` (train batch = trajectories per
    iteration, minibatch, epochs, lr, clip, grad clip, entropy and value coefficients, top-p);
  * the same reward service (one pool started here; both systems score through gRPC);
  * the same Ray resources (CPUs, and with --gpus the same GPU split: learner / samplers);
  * the same training wall time (--wall-s: summed time of training iterations, sampling + PPO;
    set-up, validation and checkpoints excluded for both).
Systems (--systems): `matrl` (the actor-learner job, `matrl.jobs.train`, in the preset's mode),
`matrl-async` (the same job in its asynchronous throughput mode), `rllib` (the whole
parameter sequence as one action: `MaterialParamEnv` + `MaterialRLModule`, with the batched
`MaterialParamVectorEnv`: RLlib's best shot), `rllib-sync` (the same with Gymnasium's
SyncVectorEnv, environments stepped one after another: RLlib's usual set-up), `rllib-token` (one
token per step: `MaterialTokenEnv` + `MaterialTokenRLModule`, for reference).
After its budget each system's final policy is validated the same way: greedy prediction on the
job's fixed held-out targets (`validation.targets` of them) scored by the same service
(`RolloutWorker.evaluate`, what `matrl train` validates with). The table gives trajectories,
trajectories/s, validation reward before and after, and matrl's throughput over each system's.

    python benchmarks/rllib_baseline.py --wall-s 240                    # CPU, tiny preset
    python benchmarks/rllib_baseline.py --quick --json                  # test size (random tiny policy)
    python benchmarks/rllib_baseline.py --gpus 2 --num-cpus 32 --reward-workers 24 \\
        --rollout-workers 2 --env-runners 8 --wall-s 600                # the 2-GPU host
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SYSTEMS = ("matrl", "matrl-async", "rllib", "rllib-sync", "rllib-token")
DEFAULT_SYSTEMS = ("matrl", "rllib", "rllib-sync", "rllib-token")
QUICK_SETS = {"targets.synthetic.graphs": ["red_plastic", "brushed_steel"], "rollout.targets_per_worker": 2,
              "rollout.sampling.samples_per_target": 4, "ppo.minibatch": 4, "ppo.epochs": 1,
              "validation.targets": 2}
TINY_POLICY = dict(node_dim=16, node_layers=1, node_heads=2, dim=32, layers=1, heads=2, mlp_ratio=2, max_slots=256)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="matrl train preset (or YAML) both systems take targets and "
                                                    "PPO settings from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train config key for both systems (repeatable)")
    p.add_argument("--init", type=Path, default=None,
                   help="initial policy checkpoint (default: the preset's init; pretrain:<preset> is bootstrapped "
                        "once under --work)")
    p.add_argument("--work", type=Path, default=Path("runs/rllib_baseline"),
                   help="working directory: bootstrap init, one run directory per invocation")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated list of {','.join(SYSTEMS)} (default {','.join(DEFAULT_SYSTEMS)}); a "
                        "system may repeat (matrl,rllib,matrl,rllib: pairs under the same machine load)")
    p.add_argument("--wall-s", type=float, default=None, help="training seconds per system (240; --quick 1)")
    p.add_argument("--min-iterations", type=int, default=None,
                   help="RLlib: at least this many iterations even past the budget (1; --quick 2)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: the preset's "
                                                              "num_cpus, else all)")
    p.add_argument("--address", default=None, help="Ray cluster to join instead of starting a local one")
    p.add_argument("--gpus", type=float, default=0.0,
                   help="GPUs each system gets (0: CPU only; 1: half for the learner, half shared by the samplers; "
                        ">=2: one for the learner, the rest split over the samplers)")
    p.add_argument("--reward-workers", type=int, default=None, help="reward workers of the shared service "
                                                                    "(default: the preset's)")
    p.add_argument("--rollout-workers", type=int, default=None, help="matrl rollout workers (default: the preset's)")
    p.add_argument("--env-runners", type=int, default=1, help="RLlib EnvRunner actors")
    p.add_argument("--envs-per-runner", type=int, default=None,
                   help="RLlib vectorised envs per EnvRunner (default: the trajectories of an iteration spread over "
                        "the EnvRunners, so one RLModule call samples as many sequences as matrl's sampler does)")
    p.add_argument("--cpus-per-env-runner", type=float, default=None,
                   help="Ray CPUs per EnvRunner (default: the matrl rollout + learner CPUs spread over them)")
    p.add_argument("--vectorize", choices=("auto", "vector_entry_point", "sync", "async"), default="auto",
                   help="RLlib gymnasium vector mode (auto: the batched MaterialParamVectorEnv for rllib, sync for "
                        "rllib-token)")
    p.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of every sampler/learner process")
    p.add_argument("--quick", action="store_true", help="test size: random tiny policy, 2 graphs, tiny batches, "
                                                        "matrl and rllib only")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on the last line")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.quick and args.systems == ",".join(DEFAULT_SYSTEMS):
        systems = ["matrl", "rllib"]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        p.error(f"--systems: unknown {unknown or 'empty'}; choose from {', '.join(SYSTEMS)}")
    args.systems = systems
    args.wall_s = args.wall_s if args.wall_s is not None else (1.0 if args.quick else 240.0)
    args.min_iterations = args.min_iterations or (2 if args.quick else 1)
    return args


def log(message: str) -> None:
    print(f"[rllib_baseline] {message}", file=sys.stderr, flush=True)


# ---- set-up -----------------------------------------------------------------------------------

def gpu_layout(gpus: float, samplers: int) -> tuple[float, float]:
    """(learner GPUs, GPUs per sampler actor) for a system given `gpus`."""
    if gpus <= 0:
        return 0.0, 0.0
    if gpus < 2:
        return gpus / 2, gpus / 2 / samplers
    return 1.0, (gpus - 1) / samplers


def base_overrides(args) -> dict:
    from matrl.config import parse_overrides

    sets = dict(QUICK_SETS) if args.quick else {}
    sets.update(parse_overrides(args.set))
    if args.rollout_workers is not None:
        sets["rollout.workers"] = args.rollout_workers
    if args.reward_workers is not None:
        sets["reward.workers"] = args.reward_workers
    return sets


def make_init(args, job, run_dir: Path) -> Path:
    """The initial policy both systems start from."""
    from policy.checkpoint import save_checkpoint

    if args.init is not None:
        return args.init
    if args.quick:
        import torch

        from policy.encoders import EncoderConfig
        from policy.model import MaterialPolicy, PolicyConfig
        from policy.tokenizer import Vocabulary

        torch.manual_seed(0)
        encoder = EncoderConfig()
        policy = MaterialPolicy(PolicyConfig.for_encoder(encoder.build(), Vocabulary.from_registry(), **TINY_POLICY))
        return save_checkpoint(run_dir / "init_quick", policy, encoder=encoder.model_dump())
    if not job.init.startswith("pretrain:"):
        return Path(job.init)
    from matrl.jobs.pretrain import bootstrap_policy

    boot = job.bootstrap
    if boot.graphs is None and job.targets.synthetic.graphs:
        boot = boot.model_copy(update={"graphs": job.targets.synthetic.graphs})
    preset = job.init.split(":", 1)[1]
    log(f"initial policy: {job.init} under {args.work / 'init'} (bootstrapped on the first run, then reused)")
    return bootstrap_policy(preset, args.work / "init", boot, job.seed)


# ---- the systems --------------------------------------------------------------------------------

def run_matrl(args, job, job_sets: dict, init: Path, address: str, run_dir: Path, fixed_cluster: bool,
              name: str = "matrl") -> tuple[dict, dict]:
    from matrl.config import load_config
    from matrl.jobs.train import TrainJob, TrainJobConfig
    from policy.checkpoint import load_policy

    learner_gpus, per_rollout = gpu_layout(args.gpus, job.rollout.workers)
    sets = {**job_sets, "init": str(init), "reward.address": address, "max_wall_s": args.wall_s,
            "iterations": 10**9, "validation.every": 0, "checkpoint_every": 10**9,
            "rollout.sampling.torch_threads": args.torch_threads, "learner.torch_threads": args.torch_threads}
    if name == "matrl-async":
        sets["mode"] = "async"
    if args.gpus > 0:
        sets.update({"learner.num_gpus": learner_gpus, "learner.device": "cuda", "rollout.num_gpus": per_rollout,
                     "rollout.sampling.device": "cuda"})
    config = load_config(TrainJobConfig, "train", args.config, sets)
    out = run_dir / name
    while out.exists():  # a system listed twice (A/B/A/B runs under the same load) gets a fresh directory
        out = out.with_name(out.name + "+")
    job = TrainJob(config, out, progress=False, fixed_cluster=fixed_cluster)
    try:
        summary = job.run()
    finally:
        job.close()
    policy, _ = load_policy(out / "checkpoints" / "latest")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    row = {"system": name, "mode": config.mode, "iterations": summary["iterations"],
           "trajectories": summary["trajectories"], "train_wall_s": summary["train_wall_s"],
           "stopped_by": summary["stopped_by"],
           "own_val_final": summary["val_history"][-1][1] if summary["val_history"] else math.nan,
           **{f"median_{key.split('/')[-1]}": median([m.get(key, math.nan) for m in metrics])
              for key in ("iteration_s", "phase/sample_s", "phase/reward_s", "phase/rollout_s", "phase/learn_s")}}
    return row, policy.state_dict()


def median(values: list[float]) -> float:
    finite = sorted(v for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    return finite[len(finite) // 2] if finite else math.nan


def run_rllib(args, job, init: Path, address: str, name: str) -> tuple[dict, dict]:
    from matrl.jobs.rllib_ppo import RLlibConfig, RLlibRun, ppo_config

    runners = max(args.env_runners, 1)
    envs = args.envs_per_runner or math.ceil(job.trajectories_per_iteration / runners)
    learner_gpus, per_runner = gpu_layout(args.gpus, runners)
    cpus = args.cpus_per_env_runner
    if cpus is None:  # what matrl's rollout workers and learner reserve, spread over the EnvRunners
        cpus = (job.rollout.workers * job.rollout.num_cpus + job.learner.num_cpus) / runners
    formulation = "token" if name == "rllib-token" else "sequence"
    rl = RLlibConfig(formulation=formulation, env_runners=args.env_runners, envs_per_env_runner=envs,
                     cpus_per_env_runner=cpus, gpus_per_env_runner=per_runner,
                     num_learners=1 if args.gpus > 0 else 0, gpus_per_learner=learner_gpus,
                     vectorize="sync" if name == "rllib-sync" else args.vectorize, torch_threads=args.torch_threads)
    log(f"{name}: building the PPO algorithm ({args.env_runners} EnvRunners x {envs} envs, "
        f"{cpus:g} CPUs and {per_runner:g} GPUs each; learner {'remote' if rl.num_learners else 'in the driver'})")
    run = RLlibRun(ppo_config(job, init, address, rl))
    try:
        def progress(row):
            log(f"{name}: iteration {row['iteration']} in {row['iteration_s']:.1f}s, {row['episodes']} trajectories "
                f"so far, episode reward {row['reward_mean']:+.4f}")

        out = run.train_for(args.wall_s, progress=progress, min_iterations=args.min_iterations)
        weights = run.policy_state()
    finally:
        run.stop()
    row = {"system": name, "iterations": out["iterations"], "trajectories": out["trajectories"],
           "train_wall_s": out["train_wall_s"], "env_steps": out["env_steps"], "envs_per_runner": envs,
           "cpus_per_env_runner": cpus, "vectorize": rl.vectorize,
           **{f"median_{key}": median([h[key] for h in out["history"]])
              for key in ("iteration_s", "sample_s", "learn_s")}}
    return row, weights


# ---- main ----------------------------------------------------------------------------------------

def run(args) -> list[dict]:
    import torch

    from matrl.config import load_config
    from matrl.jobs.ray_runtime import init_ray
    from matrl.jobs.reward import start_background
    from matrl.jobs.rllib_ppo import evaluate_policy
    from matrl.jobs.train import TrainJobConfig
    from policy.checkpoint import load_policy
    from reward_service.pool import PoolConfig

    torch.set_num_threads(args.torch_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.torch_threads))
    job_sets = base_overrides(args)
    job = load_config(TrainJobConfig, "train", args.config, job_sets)
    run_dir = args.work / datetime.now().strftime("run_%Y%m%d_%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    num_cpus = args.num_cpus or job.num_cpus or os.cpu_count()
    info = init_ray(args.address, num_cpus=num_cpus, num_gpus=math.ceil(args.gpus) if args.gpus else None,
                    log_to_driver=False)
    server = None
    try:
        init = make_init(args, job, run_dir)
        job = load_config(TrainJobConfig, "train", args.config, {**job_sets, "init": str(init)})
        policy, ckpt = load_policy(init)
        server = start_background(job.reward.config, PoolConfig(workers=job.reward.workers,
                                                                 num_cpus=job.reward.num_cpus))
        address = f"127.0.0.1:{server.server.port}"
        log(f"reward service at {address} ({job.reward.workers} workers); init {init}; "
            f"{job.trajectories_per_iteration} trajectories per iteration; {args.wall_s:g}s per system")

        def validate(weights) -> float:
            return evaluate_policy(weights, ckpt.policy.to_dict(), ckpt.encoder, job.validation_targets(),
                                   job.validation.targets, job.seed, address)["reward_mean"]

        val_init = validate(policy.state_dict())
        log(f"validation reward of the initial policy: {val_init:+.4f} ({job.validation.targets} held-out targets)")
        rows = []
        for system in args.systems:
            start = time.perf_counter()
            try:
                if system.startswith("matrl"):
                    row, weights = run_matrl(args, job, job_sets, init, address, run_dir, info["started"], system)
                else:
                    row, weights = run_rllib(args, job, init, address, system)
                row["val_reward"] = validate(weights)
            except Exception as err:  # noqa: BLE001 - one system's failure must not lose the other rows
                log(f"{system} failed:\n{traceback.format_exc()}")
                row = {"system": system, "iterations": 0, "trajectories": 0, "train_wall_s": math.nan,
                       "val_reward": math.nan, "error": f"{type(err).__name__}: {err}"[:500]}
            row["val_reward_init"] = val_init
            row["trajectories_per_s"] = (row["trajectories"] / row["train_wall_s"]
                                         if row["train_wall_s"] and math.isfinite(row["train_wall_s"]) else math.nan)
            row["total_s"] = time.perf_counter() - start
            log(f"{system}: {row['trajectories']} trajectories in {row['train_wall_s']:.1f}s "
                f"({row['trajectories_per_s']:.2f}/s), validation reward {val_init:+.4f} -> {row['val_reward']:+.4f}")
            rows.append(row)
        matrl = [r["trajectories_per_s"] for r in rows if r["system"] == "matrl" and r["trajectories_per_s"] > 0]
        base = sum(matrl) / len(matrl) if matrl else math.nan  # mean over repeated matrl rows
        for row in rows:
            row["matrl_speedup"] = base / row["trajectories_per_s"] if row["trajectories_per_s"] > 0 else math.nan
        meta = {"config": args.config, "sets": job_sets, "init": str(init), "wall_s": args.wall_s,
                "gpus": args.gpus, "num_cpus": num_cpus, "reward_workers": job.reward.workers,
                "rollout_workers": job.rollout.workers, "env_runners": args.env_runners,
                "envs_per_runner": args.envs_per_runner, "host": platform.node(), "cpus": os.cpu_count(),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "run_dir": str(run_dir)}
        (run_dir / "rllib_baseline.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        for row in rows:
            row["meta"] = meta
        return rows
    finally:
        if server is not None:
            server.stop()
        if info["started"]:
            import ray

            ray.shutdown()


def print_table(rows: list[dict]) -> None:
    meta = rows[0]["meta"]
    print(f"matrl vs RLlib PPO: preset {meta['config']}, {meta['wall_s']:g}s training per system, "
          f"{meta['num_cpus']} Ray CPUs, {meta['gpus']:g} GPUs, {meta['reward_workers']} reward workers, "
          f"host {meta['host']} ({meta['cpus']} cores), {meta['date']}")
    header = ("system", "iterations", "trajectories", "train s", "traj/s", "val reward (init -> final)",
              "matrl x")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join((r["system"], str(r["iterations"]), str(r["trajectories"]), f"{r['train_wall_s']:.1f}",
                          f"{r['trajectories_per_s']:.2f}", f"{r['val_reward_init']:+.4f} -> {r['val_reward']:+.4f}",
                          f"{r['matrl_speedup']:.2f}")) + (f" | FAILED: {r['error']}" if r.get("error") else ""))
    print("median seconds per iteration (matrl: its phases; RLlib: its own timers, smoothed over iterations)")
    print("system | iteration | rollout (sample + reward) | of which reward | learn")
    for r in rows:
        if r.get("error"):
            continue
        rollout = r.get("median_rollout_s", r.get("median_sample_s", math.nan))
        print(" | ".join((r["system"], f"{r.get('median_iteration_s', math.nan):.2f}", f"{rollout:.2f}",
                          f"{r.get('median_reward_s', math.nan):.2f}", f"{r.get('median_learn_s', math.nan):.2f}")))


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print_table(rows)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "meta"} | {"meta": r["meta"]} for r in rows],
                         default=str))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
