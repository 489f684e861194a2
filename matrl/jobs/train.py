"""`matrl train`: the actor-learner PPO job (paper §4.3-4.4, Fig. 2) and its typed config.

Roles (OpenRLHF-style, one actor per role):
  * reward service: a Ray pool of CPU reward workers behind the gRPC server (started here on a
    daemon thread of the driver, or a running one given by `reward.address`);
  * replay buffer: one threaded actor holding Arrow trajectory batches (`learner.buffer`);
  * rollout workers: `rollout.workers` actors (GPU when they ask for one) that sample, score
    through the gRPC client and append to the buffer (`rollout_workers.actor`);
  * learner: one actor running PPO on what the buffer holds (`learner.actor`).

Synchronous mode (the paper's, default): every iteration publishes the learner's weights, runs
every rollout worker's share, then one PPO update on exactly those trajectories. Asynchronous
mode: rollout workers keep sampling with the newest weights they were given while the learner
trains on rows at most `max_policy_lag` versions old (older rows are dropped and counted; the
importance weight in `learner.ppo` corrects for the lag within the bound).

A rollout worker that dies or exceeds `rollout.timeout_s` is replaced by a fresh actor with the
current weights and its share is sampled again with the same seed (`rollout.max_restarts` per
iteration), so the learner never waits forever. Everything a run needs to continue is in
`OUT/checkpoints/latest` after every `checkpoint_every` iterations; `--resume` continues from it
and reproduces the iteration an uninterrupted run would have made next (every random draw is a
function of the job seed and the iteration).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from learner.buffer import BufferConfig, ReplayBufferShell
from learner.ppo import PPOConfig
from matrl.jobs.pretrain import BootstrapConfig
from matrl.jobs.runtime import LocalRuntime, RayRuntime, RoleDied
from policy.checkpoint import CheckpointError, released_checkpoint
from reward_service.config import RewardConfig
from rollout_workers.actor import RewardEndpoint, RolloutSpec, RolloutWorkerShell
from rollout_workers.targets import TargetsConfig
from rollout_workers.worker import RolloutConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutGroupConfig(_Strict):
    workers: int = Field(1, ge=1, description="rollout worker actors (at the start; `matrl scale` changes it)")
    min_workers: int = Field(1, ge=1, description="smallest count `matrl scale` may ask for")
    max_workers: int = Field(64, ge=1, description="largest count `matrl scale` may ask for")
    targets_per_worker: int = Field(4, ge=1, description="targets each worker samples per iteration")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="fractions allowed: rollout and learner can share a GPU")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources (node types)")
    timeout_s: float = Field(900.0, gt=0, description="a rollout call longer than this counts as a dead worker")
    max_restarts: int = Field(3, ge=0, description="replacements of dead rollout workers per iteration")
    sampling: RolloutConfig = RolloutConfig()


class LearnerGroupConfig(_Strict):
    device: str = "auto"
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    torch_threads: int | None = Field(None, ge=1)


class RewardGroupConfig(_Strict):
    address: str | None = Field(None, description="a running reward service (HOST:PORT); None: start one")
    token_file: str | None = Field(None, description="shared token of the reward service; 'auto': the job's "
                                                     "own service gets a fresh random token (OUT/reward_token)")
    workers: int = Field(2, ge=1, description="reward worker actors of the job's own service (at the start)")
    min_workers: int = Field(1, ge=1, description="smallest count `matrl scale` may ask for")
    max_workers: int = Field(1024, ge=1, description="largest count `matrl scale` may ask for")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per reward worker")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per reward worker")
    gpu_workers: int = Field(0, ge=0, description="GPU reward workers beside the CPU ones (reward_service.pool)")
    num_gpus: float = Field(0.25, gt=0, le=1, description="GPU share per GPU reward worker")
    gpu_resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per GPU "
                                            "reward worker")
    gpu_overrides: dict[str, Any] = Field(default_factory=dict, description="RewardConfig fields that differ on "
                                          "GPU reward workers (device is cuda)")
    host: str = Field("127.0.0.1", description="where the job's own service listens (another host needs "
                                                  "insecure: true or a TLS-terminating network)")
    insecure: bool = Field(False, description="allow the job's service to listen off loopback without TLS "
                                              "(inside a private cluster network; token auth still applies)")
    connect_timeout_s: float = Field(60.0, gt=0, description="wait for the service before giving up")
    config: RewardConfig = RewardConfig()


class ValidationConfig(_Strict):
    every: int = Field(5, ge=0, description="validate every N iterations (0: only before and after)")
    targets: int = Field(16, ge=1, description="fixed held-out targets, greedy prediction each")
    samples: int = Field(0, ge=0, le=64, description="also N top-p samples per target: the policy's expected "
                                                     "reward (val_sample_reward) and top-1 of N (val_best_of_n)")
    source: TargetsConfig | None = Field(None, description="None: renders of the training structures with "
                                                          "parameter draws of another seed (held-out images)")


class TrainJobConfig(_Strict):
    init: str = Field(description="pre-trained checkpoint directory, 'released' (the policy under models/, "
                                  "see its MODEL_CARD.md), or pretrain:<preset> to make one first")
    iterations: int = Field(100, ge=1)
    max_wall_s: float | None = Field(None, gt=0, description="stop after the iteration that brings the training "
                                                            "time (sampling + PPO, summed over iterations) to this")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    mode: Literal["sync", "async"] = "sync"
    max_policy_lag: int = Field(1, ge=0, description="async: rows older than this many versions are dropped")
    checkpoint_every: int = Field(1, ge=1)
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started when none runs")
    targets: TargetsConfig = TargetsConfig()
    validation: ValidationConfig = ValidationConfig()
    rollout: RolloutGroupConfig = RolloutGroupConfig()
    learner: LearnerGroupConfig = LearnerGroupConfig()
    reward: RewardGroupConfig = RewardGroupConfig()
    buffer: BufferConfig = BufferConfig()
    ppo: PPOConfig = PPOConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()

    @property
    def trajectories_per_iteration(self) -> int:
        r = self.rollout
        return r.workers * r.targets_per_worker * r.sampling.samples_per_target

    @model_validator(mode="after")
    def _check(self) -> "TrainJobConfig":
        for role in ("rollout", "reward"):
            group = getattr(self, role)
            if not group.min_workers <= group.workers <= group.max_workers:
                raise ValueError(f"{role}.workers {group.workers} outside [{role}.min_workers {group.min_workers}, "
                                 f"{role}.max_workers {group.max_workers}]")
        if self.init == "released":
            try:
                released_checkpoint()
            except CheckpointError as err:
                raise ValueError(f"init: released: {err}") from None
        elif not self.init.startswith("pretrain:") and not Path(self.init).is_dir():
            raise ValueError(f"init: {self.init!r} is neither a checkpoint directory, 'released' nor "
                             "pretrain:<preset>")
        if self.ppo.minibatch > self.trajectories_per_iteration:
            raise ValueError(f"ppo.minibatch {self.ppo.minibatch} exceeds the {self.trajectories_per_iteration} "
                             "trajectories of an iteration (rollout.workers x targets_per_worker x "
                             "sampling.samples_per_target)")
        return self

    def validation_targets(self) -> TargetsConfig:
        if self.validation.source is not None:
            return self.validation.source
        syn = self.targets.synthetic.model_copy(update={"seed": self.targets.synthetic.seed + 1_000_003})
        return TargetsConfig(synthetic=syn)

    def actor_cpus(self, in_process: bool = False) -> float:
        """CPUs the job's actors reserve (reward workers only when the job starts its own service;
        rollout workers and learner only when they are actors)."""
        reward = 0 if self.reward.address else (self.reward.workers + self.reward.gpu_workers) * self.reward.num_cpus
        roles = 0 if in_process else self.rollout.workers * self.rollout.num_cpus + self.learner.num_cpus
        return roles + reward


def derive_seed(*parts: int) -> int:
    return int(np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts]).integers(2**31 - 1))


class TrainError(RuntimeError):
    """A job that cannot start or continue; the message says why."""


class LearnerLost(RuntimeError):
    """The learner actor died; the job restarts it from the latest checkpoint."""


class TrainJob:
    """Creates the roles, runs the iterations, checkpoints; `run()` returns the summary dict."""

    def __init__(self, config: TrainJobConfig, out_dir: str | Path, resume: bool = False, local: bool = False,
                 progress: bool = True, job_name: str = "matrl-train", fixed_cluster: bool = False):
        self.config = config
        self.fixed_cluster = fixed_cluster
        self.out = Path(out_dir)
        self.resume = resume
        self.runtime = LocalRuntime() if local else RayRuntime()
        self.progress = progress
        self.job_name = job_name
        self.server = None
        self.counts = {"rollout_restarts": 0, "learner_restarts": 0, "reward_failures": 0, "stale_dropped": 0,
                       "reward_retries": 0, "reward_restarts": 0}
        self.max_learner_restarts = 3
        self.pids: dict[str, int] = {}

    # ---- set-up -------------------------------------------------------------------------------
    def _checkpoint_dir(self, name: str) -> Path:
        return self.out / "checkpoints" / name

    def _init_checkpoint(self) -> Path:
        init = self.config.init
        if init.startswith("pretrain:"):
            from matrl.jobs.pretrain import bootstrap_policy

            boot = self.config.bootstrap
            if boot.graphs is None and self.config.targets.synthetic.graphs:
                boot = boot.model_copy(update={"graphs": self.config.targets.synthetic.graphs})
            return bootstrap_policy(init.split(":", 1)[1], self.out, boot, self.config.seed)
        return released_checkpoint() if init == "released" else Path(init)

    def _check_resources(self) -> None:
        """On a Ray this job started itself (fixed size), actors that cannot all be placed would wait
        forever: refuse before anything starts. A joined cluster may grow (autoscaler), so no check."""
        import ray

        if not self.fixed_cluster:
            return
        available = ray.cluster_resources().get("CPU", 0)
        needed = self.config.actor_cpus(in_process=not self.runtime.distributed)
        if needed > available + 1e-9:
            raise TrainError(
                    f"the job's actors need {needed:g} CPUs (rollout {self.config.rollout.workers} x "
                    f"{self.config.rollout.num_cpus:g}, learner {self.config.learner.num_cpus:g}, reward "
                    f"{self.config.reward.workers} x {self.config.reward.num_cpus:g}) but the cluster has "
                    f"{available:g}; lower the counts or num_cpus (fractions are allowed)")

    def _start_reward(self) -> str:
        cfg = self.config.reward
        from reward_service.client import RewardClient, RewardServiceError

        self.token = None
        token_file = cfg.token_file
        if token_file == "auto":
            if cfg.address is not None:
                raise TrainError("reward.token_file 'auto' is for the job's own service; give the running "
                                 "service's token file with reward.address")
            import os
            import secrets

            path = self.out / "reward_token"
            path.write_text(secrets.token_hex(32))
            os.chmod(path, 0o600)
            token_file = str(path)
        if token_file is not None:
            from reward_service.api import read_token

            try:
                self.token = read_token(token_file)
            except (OSError, ValueError) as err:
                raise TrainError(f"reward.token_file: {err}") from None
        if cfg.address is None:
            from matrl.jobs.reward import start_background
            from reward_service.pool import PoolConfig
            from reward_service.server import ServerConfig

            try:
                server_config = ServerConfig(host=cfg.host, port=0, token_file=token_file, insecure=cfg.insecure)
            except ValueError as err:
                raise TrainError(f"reward.host: {err}") from None
            pool = PoolConfig(workers=cfg.workers, num_cpus=cfg.num_cpus, resources=cfg.resources,
                              min_workers=cfg.min_workers, max_workers=cfg.max_workers, gpu_workers=cfg.gpu_workers,
                              num_gpus_per_worker=cfg.num_gpus, gpu_resources=cfg.gpu_resources,
                              gpu_overrides=cfg.gpu_overrides)
            self.server = start_background(cfg.config, pool, server_config)
            host = cfg.host
            if host in ("0.0.0.0", "::"):
                import ray

                host = ray.util.get_node_ip_address()
            address = f"{host}:{self.server.server.port}"
        else:
            address = cfg.address
        try:
            with RewardClient(address, token=self.token) as client:
                client.wait_ready(timeout_s=cfg.connect_timeout_s)
        except RewardServiceError as err:
            raise TrainError(f"reward service at {address} is not reachable: {err.message}") from None
        return address

    def _rollout_spec(self, encoder: dict, policy_config: dict, address: str) -> RolloutSpec:
        return RolloutSpec(policy_config=policy_config, encoder=encoder, targets=self.config.targets,
                           validation=self.config.validation_targets(), rollout=self.config.rollout.sampling,
                           reward=RewardEndpoint(address=address, token=self.token))

    def _new_rollout(self, index: int):
        r = self.config.rollout
        options = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus or None, "resources": r.resources or None,
                   "max_restarts": 0, "name": None}
        handle = self.runtime.actor(RolloutWorkerShell, f"rollout-{index}", self.spec, self.buffer_ref,
                                    name=f"rollout-{index}", options=options)
        self.pids[f"rollout-{index}"] = self.runtime.get(self.runtime.call(handle, "ready"),
                                                         timeout_s=self.config.rollout.timeout_s)
        return handle

    def _setup(self) -> None:
        from policy.checkpoint import read_checkpoint_info

        cfg = self.config
        latest = self._checkpoint_dir("latest")
        if self.resume and not (latest / "config.json").is_file():
            raise TrainError(f"--resume: {latest} holds no checkpoint to resume from")
        if not self.resume and (latest / "config.json").is_file():
            raise TrainError(f"{self.out} already holds a run (checkpoints/latest); pass --resume to continue it "
                             "or choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_resources()
        init = self._init_checkpoint()
        info = read_checkpoint_info(latest if self.resume else init)
        self.address = self._start_reward()
        rt = self.runtime
        self.buffer = rt.actor(ReplayBufferShell, cfg.buffer, name="replay-buffer",
                               options={"num_cpus": 0, "max_concurrency": 8})
        self.buffer_ref = rt.inner(self.buffer)
        self.init = init
        ready = self._new_learner(resume=self.resume)
        self.state = dict(ready["job_state"]) if self.resume else {}
        self.spec = self._rollout_spec(info.encoder, info.policy.to_dict(), self.address)
        self.rollouts = [self._new_rollout(i) for i in range(cfg.rollout.workers)]
        for handle in self.rollouts:
            rt.get(rt.call(handle, "ready"))
        self.control = None
        if rt.distributed:
            from matrl.jobs.control import NAMESPACE, PREFIX, JobControl

            bounds = {"rollout": (cfg.rollout.min_workers, cfg.rollout.max_workers),
                      "reward": (cfg.reward.min_workers, cfg.reward.max_workers)}
            try:
                self.control = rt.actor(JobControl, self.job_name, bounds,
                                        {"rollout": cfg.rollout.workers, "reward": cfg.reward.workers},
                                        self.server is not None, name="control",
                                        options={"name": PREFIX + self.job_name, "namespace": NAMESPACE,
                                                 "num_cpus": 0})
                rt.get(rt.call(self.control, "status"))
            except ValueError as err:
                raise TrainError(f"a matrl train job named {self.job_name!r} already runs on this cluster "
                                 f"({err}); pass another --job-name") from None

    def _new_learner(self, resume: bool) -> dict:
        """Start the learner actor, from checkpoints/latest when resuming (and when one exists)."""
        from learner.actor import LearnerShell

        cfg, rt = self.config, self.runtime
        latest = self._checkpoint_dir("latest")
        resume_from = str(latest) if resume and (latest / "config.json").is_file() else None
        lc = cfg.learner
        self.learner = rt.actor(LearnerShell, str(self.init), cfg.ppo, self.buffer_ref, lc.device, lc.torch_threads,
                                resume_from, cfg.seed, name="learner",
                                options={"num_cpus": lc.num_cpus, "num_gpus": lc.num_gpus or None,
                                         "resources": lc.resources or None})
        ready = rt.get(rt.call(self.learner, "ready"))
        self.pids["learner"] = ready["pid"]
        return ready

    def _learner(self, method: str, *args):
        """A blocking learner call; a dead learner becomes LearnerLost."""
        try:
            return self.runtime.get(self.runtime.call(self.learner, method, *args))
        except RoleDied as err:
            raise LearnerLost(str(err)) from None

    def _recover_learner(self, why: str) -> None:
        """Replace a dead learner by one restored from checkpoints/latest; the iterations since that
        checkpoint are redone (their seeds are those of the first attempt)."""
        self.counts["learner_restarts"] += 1
        if self.counts["learner_restarts"] > self.max_learner_restarts:
            raise TrainError(f"the learner died {self.counts['learner_restarts']} times; last: {why}")
        print(f"[train] the learner died ({why}); restarting it from {self._checkpoint_dir('latest')}", flush=True)
        rt = self.runtime
        rt.kill(self.learner)
        for future, _ in getattr(self, "_pending", {}).values():  # async: let in-flight rollouts land
            try:
                rt.get(future, timeout_s=self.config.rollout.timeout_s)
            except Exception:  # noqa: BLE001 - a rollout lost with it is simply not waited for
                pass
        self._pending = {}
        rt.get(rt.call(self.buffer, "take_all"))  # rows of the lost update are sampled again
        ready = self._new_learner(resume=True)
        keep = {k: self.state[k] for k in ("val_reward_pretrained", "val_history", "val_sample_history")
                if k in self.state}
        self.state = {**keep, **ready["job_state"]} if ready["job_state"] else {
            **keep, "iteration": 0, "val_reward_best": self.state.get("val_reward_pretrained"), "wall_s": 0.0,
            "trajectories": 0}
        self.state.setdefault("val_history", [])
        self.state.setdefault("wall_s", 0.0)
        self.state.setdefault("trajectories", 0)

    # ---- phases -------------------------------------------------------------------------------
    def _weights(self):
        """The learner's weights as something every rollout call can take (an object-store ref that
        Ray resolves in each rollout worker; the policy is a few MB). `self.publish_s` is how long the
        learner took to put them into the object store."""
        start = time.perf_counter()
        future = self.runtime.call(self.learner, "weights")
        self.runtime.wait([future], timeout_s=None)
        self.publish_s = time.perf_counter() - start
        try:
            value = self.runtime.get(future)  # raises if the learner died
        except RoleDied as err:
            raise LearnerLost(str(err)) from None
        return future if self.runtime.distributed else value

    def _apply_scaling(self, retire=None) -> dict:
        """Bring rollout and reward worker counts to what `matrl scale` asked for (between iterations,
        so no running rollout is cut short); returns the live counts. In asynchronous mode `retire`
        takes the rollout workers to remove instead: they finish their rollout first."""
        rt = self.runtime
        # the CPU workers: what `resize` and the control count (GPU reward actors are a fixed number
        # beside them; comparing the total once re-asked for the same size every iteration)
        live = {"rollout": len(self.rollouts),
                "reward": self.server.pool.size if self.server is not None else 0}
        if self.control is None:
            return live
        want = rt.get(rt.call(self.control, "desired"))
        if want["rollout"] != len(self.rollouts):
            print(f"[train] scaling rollout workers {len(self.rollouts)} -> {want['rollout']}", flush=True)
            if retire is not None and want["rollout"] < len(self.rollouts):
                retire(list(range(want["rollout"], len(self.rollouts))))
            while retire is None and len(self.rollouts) > want["rollout"]:
                rt.kill(self.rollouts.pop())
            fresh = [self._new_rollout(i) for i in range(len(self.rollouts), want["rollout"])]
            for handle in fresh:
                rt.get(rt.call(handle, "ready"))
            self.rollouts += fresh
        if self.server is not None and want["reward"] != live["reward"]:
            print(f"[train] scaling reward workers {live['reward']} -> {want['reward']}", flush=True)
            try:
                self.server.run(self.server.pool.resize(want["reward"]), timeout_s=self.config.rollout.timeout_s)
            except Exception as err:  # noqa: BLE001 - keep training with what the pool has; say why
                print(f"[train] reward pool resize to {want['reward']} failed: {err}", flush=True)
        live = {"rollout": len(self.rollouts), "reward": self.server.pool.size if self.server else 0}
        rt.get(rt.call(self.control, "report", live))
        return live

    def _rollout_phase(self, weights, version: int, iteration: int) -> list[dict]:
        """Every worker's share for this iteration; dead or stuck workers are replaced and redone."""
        rt, cfg = self.runtime, self.config.rollout
        workers = len(self.rollouts)
        seeds = [derive_seed(self.config.seed, iteration, w) for w in range(workers)]
        futures = {w: rt.call(self.rollouts[w], "rollout", weights, version, cfg.targets_per_worker, seeds[w])
                   for w in range(workers)}
        results: dict[int, dict] = {}
        restarts = 0
        deadline = time.monotonic() + cfg.timeout_s
        while futures:
            ready, _ = rt.wait(list(futures.values()), timeout_s=max(0.0, deadline - time.monotonic()),
                               num_returns=len(futures))
            done = {w: f for w, f in futures.items() if any(f is r for r in ready)}
            failed = []
            for w, future in done.items():
                del futures[w]
                try:
                    results[w] = rt.get(future)
                except RoleDied as err:
                    failed.append((w, str(err)))
                except Exception as err:  # noqa: BLE001 - e.g. the reward service failed the call: sample again
                    failed.append((w, f"{type(err).__name__}: {str(err).splitlines()[-1][:300]}"))
            if futures and time.monotonic() >= deadline:
                failed += [(w, f"no answer within rollout.timeout_s={cfg.timeout_s:g}s") for w in futures]
                futures.clear()
            for w, why in failed:
                restarts += 1
                if restarts > cfg.max_restarts:
                    raise TrainError(f"rollout workers failed {restarts} times in iteration {iteration} "
                                     f"(rollout.max_restarts={cfg.max_restarts}); last: rollout-{w}: {why}")
                self._replace_rollout(w, why)
                futures[w] = rt.call(self.rollouts[w], "rollout", weights, version, cfg.targets_per_worker, seeds[w])
                deadline = time.monotonic() + cfg.timeout_s
        return [results[w] for w in range(workers)]

    def _replace_rollout(self, w: int, why: str) -> None:
        print(f"[train] rollout-{w} failed ({why}); replacing it", flush=True)
        self.runtime.kill(self.rollouts[w])
        self.rollouts[w] = self._new_rollout(w)
        self.counts["rollout_restarts"] += 1

    def _validate(self, weights, version: int) -> dict:
        """Greedy reward on the fixed validation targets (on rollout-0; replaced if it dies)."""
        rt = self.runtime
        for attempt in range(self.config.rollout.max_restarts + 1):
            try:
                return rt.get(rt.call(self.rollouts[0], "evaluate", weights, version, self.config.validation.targets,
                                      self.config.seed, self.config.validation.samples), timeout_s=self.config.rollout.timeout_s)
            except RoleDied as err:
                if attempt == self.config.rollout.max_restarts:
                    raise TrainError(f"validation failed: rollout-0 died {attempt + 1} times ({err})") from None
                self._replace_rollout(0, str(err))
        raise AssertionError("unreachable")

    def _save(self, name: str, metrics: dict | None = None) -> None:
        self._learner("save", str(self._checkpoint_dir(name)), dict(self.state), metrics or {})

    def _write_roles(self) -> None:
        """OUT/roles.json: the process id of every role (for operators and for fault tests)."""
        if not self.runtime.distributed:
            return
        roles = {"learner": self.pids.get("learner"),
                 "rollout": [self.pids.get(f"rollout-{w}") for w in range(len(self.rollouts))],
                 "reward": [slot.pid for slot in self.server.pool.slots] if self.server is not None else []}
        tmp = self.out / ".roles.json.tmp"
        tmp.write_text(json.dumps(roles))
        tmp.replace(self.out / "roles.json")

    def _reward_counts(self) -> dict:
        if self.server is None:
            return {}
        status = self.server.pool.status()
        return {"reward_retries": status.get("retries", 0), "reward_restarts": status.get("restarts", 0),
                "reward_workers": status.get("ready", 0)}

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        from matrl.jobs.metrics import JobMetrics

        started = time.perf_counter()
        self._setup()
        cfg = self.config
        state = self.state
        state.setdefault("iteration", 0)
        state.setdefault("val_history", [])
        state.setdefault("wall_s", 0.0)
        state.setdefault("trajectories", 0)
        state.setdefault("learn_s", 0.0)
        state.pop("stopped_by", None)  # a resumed run continues until its own limits
        metrics_sink = JobMetrics(self.out, self.job_name, ray_metrics=self.runtime.distributed,
                                  total_iterations=cfg.iterations, start_iteration=state["iteration"],
                                  progress=self.progress)
        (self.out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
        try:
            version = self._learner("version")
            if "val_reward_pretrained" not in state:
                weights = self._weights()
                val = self._validate(weights, version)
                state["val_reward_pretrained"] = state["val_reward_best"] = val["reward_mean"]
                state["val_history"].append([0, val["reward_mean"]])
                metrics_sink.scalar("val_reward", val["reward_mean"], 0)
                for key, value in self._record_sampled_validation(val, 0).items():
                    metrics_sink.scalar(key, value, 0)
                print(f"[train] validation before RL: greedy reward {val['reward_mean']:+.4f} on "
                      f"{len(val['rewards'])} held-out targets", flush=True)
                (self.out / "validation_pretrained.json").write_text(json.dumps(val))
                self._save("best", {"val_reward": val["reward_mean"]})
            while True:
                try:
                    self._write_roles()
                    self._run_sync(metrics_sink) if cfg.mode == "sync" else self._run_async(metrics_sink)
                    break
                except LearnerLost as err:
                    self._recover_learner(str(err))
        finally:
            metrics_sink.close()
        summary = self._summary(time.perf_counter() - started)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _finish_iteration(self, sink, iteration: int, version: int, metrics: dict, weights_fn) -> None:
        cfg, state = self.config, self.state
        state["iteration"] = iteration + 1
        state["version"] = version
        state["trajectories"] += int(metrics.get("trajectories", 0))
        state.setdefault("reward_first", metrics.get("reward_mean"))
        state["reward_last"] = metrics.get("reward_mean")
        out_of_time = (cfg.max_wall_s is not None
                       and state["wall_s"] + metrics.get("iteration_s", 0.0) >= cfg.max_wall_s)
        last = iteration + 1 == cfg.iterations or out_of_time
        if out_of_time:
            state["stopped_by"] = "max_wall_s"
        if (cfg.validation.every and (iteration + 1) % cfg.validation.every == 0) or last:
            t = time.perf_counter()
            val = self._validate(weights_fn(), version)
            metrics["val_reward"] = val["reward_mean"]
            metrics["phase/validate_s"] = time.perf_counter() - t
            state["val_history"].append([iteration + 1, val["reward_mean"]])
            metrics.update(self._record_sampled_validation(val, iteration + 1))
            if val["reward_mean"] > state["val_reward_best"]:
                state["val_reward_best"] = val["reward_mean"]
                state["val_best_iteration"] = iteration + 1
                self._save("best", {"val_reward": val["reward_mean"]})
        self._write_roles()
        for key, value in self._reward_counts().items():
            if key in self.counts:
                metrics[f"count/{key}"] = value - self.counts.get(f"_{key}", 0)
                self.counts[f"_{key}"] = value
            else:
                metrics[key] = value
        state["wall_s"] += metrics.get("iteration_s", 0.0)
        if (iteration + 1) % cfg.checkpoint_every == 0 or last:
            t = time.perf_counter()
            self._save("latest", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            metrics["phase/checkpoint_s"] = time.perf_counter() - t
        sink.iteration(iteration + 1, metrics)

    def _record_sampled_validation(self, val: dict, iteration: int) -> dict[str, float]:
        """Appends [iteration, expected reward of top-p samples, top-1 of N] to val_sample_history
        when `validation.samples` > 0 (the greedy reward stays in val_history); returns them as
        metrics ({} without samples)."""
        if "sample_reward_mean" not in val:
            return {}
        row = [iteration, val["sample_reward_mean"], val["best_of_n_mean"]]
        self.state.setdefault("val_sample_history", []).append(row)
        return {"val_sample_reward": row[1], "val_best_of_n": row[2]}

    def _run_sync(self, sink) -> None:
        cfg, rt = self.config, self.runtime
        version = self._learner("version")
        for iteration in range(self.state["iteration"], cfg.iterations):
            self._apply_scaling()
            t0 = time.perf_counter()
            weights = self._weights()
            rollouts = self._rollout_phase(weights, version, iteration)
            t1 = time.perf_counter()
            update = self._learner("update", cfg.seed, iteration)
            t2 = time.perf_counter()
            version = int(update["version"])
            metrics = self._iteration_metrics(update, rollouts, t2 - t0, rollout_s=t1 - t0, learn_s=t2 - t1)
            buffer_stats = rt.get(rt.call(self.buffer, "stats"))
            metrics.update({"buffer_rows": buffer_stats["rows"], "buffer_bytes": buffer_stats["bytes"],
                            "rollout_workers": len(self.rollouts)})
            # synchronous: the learner waits for the whole rollout phase, rollouts for the update
            metrics["learner_idle_fraction"] = (t1 - t0) / (t2 - t0)
            busy = np.mean([sum(r.get(k, 0.0) for k in ("sample_s", "reward_s", "pack_s", "buffer_put_s"))
                            for r in rollouts])
            metrics["rollout_idle_fraction"] = max(0.0, 1 - busy / (t2 - t0))
            self._finish_iteration(sink, iteration, version, metrics, self._weights)
            if self.state.get("stopped_by"):
                break

    def _run_async(self, sink) -> None:
        cfg, rt, state = self.config, self.runtime, self.state
        r = cfg.rollout
        version = self._learner("version")
        per_worker = r.targets_per_worker * r.sampling.samples_per_target
        rounds = state.setdefault("rollout_rounds", [0] * len(self.rollouts))
        weights = self._weights()
        pending: dict = {}
        self._pending = pending
        retiring: set[int] = set()

        def submit(w: int) -> None:
            while len(rounds) <= w:
                rounds.append(0)
            seed = derive_seed(cfg.seed, 1_000_000 + rounds[w], w)
            rounds[w] += 1
            pending[w] = (rt.call(self.rollouts[w], "rollout", weights, version, r.targets_per_worker, seed),
                          time.monotonic())

        def retire(workers: list[int]) -> None:
            retiring.update(workers)

        def settle_retired() -> None:
            """Workers asked to leave go once their last rollout has landed in the buffer."""
            while retiring and len(self.rollouts) - 1 in retiring and len(self.rollouts) - 1 not in pending:
                w = len(self.rollouts) - 1
                retiring.discard(w)
                rt.kill(self.rollouts.pop())

        for w in range(len(self.rollouts)):
            submit(w)
        rows = per_worker * len(self.rollouts)
        iteration = state["iteration"]
        t_iter = time.perf_counter()
        finished: list[dict] = []
        learn = rt.call(self.learner, "update", cfg.seed, iteration, rows, max(0, version - cfg.max_policy_lag))
        while iteration < cfg.iterations and not state.get("stopped_by"):
            futures = [f for f, _ in pending.values()] + [learn]
            ready, _ = rt.wait(futures, timeout_s=1.0, num_returns=1)
            for w, (future, since) in list(pending.items()):
                if any(future is x for x in ready):
                    del pending[w]
                    try:
                        finished.append(rt.get(future))
                    except RoleDied as err:
                        self._replace_rollout(w, str(err))
                    except Exception as err:  # noqa: BLE001 - the rollout failed (e.g. reward service): go on
                        self.counts["rollout_errors"] = self.counts.get("rollout_errors", 0) + 1
                        print(f"[train] rollout-{w} failed ({type(err).__name__}); sampling again", flush=True)
                    if w not in retiring:
                        submit(w)
                elif time.monotonic() - since > r.timeout_s:
                    del pending[w]
                    self._replace_rollout(w, f"no answer within rollout.timeout_s={r.timeout_s:g}s")
                    submit(w)
            if any(learn is x for x in ready):
                try:
                    update = rt.get(learn)
                except RoleDied as err:
                    raise LearnerLost(str(err)) from None
                version = int(update["version"])
                weights = self._weights()
                elapsed = time.perf_counter() - t_iter
                metrics = self._iteration_metrics(update, finished, elapsed, rollout_s=float("nan"),
                                                  learn_s=update.get("learn_s", 0.0))
                stats = rt.get(rt.call(self.buffer, "stats"))
                metrics.update({"buffer_rows": stats["rows"], "buffer_bytes": stats["bytes"],
                                "rollout_workers": len(self.rollouts),
                                "learner_idle_fraction": min(1.0, update.get("wait_s", 0.0) / elapsed)})
                # rollout work that landed this iteration over the workers' time (a rollout begun in the
                # previous iteration counts here: a per-iteration estimate that averages out over iterations)
                busy = sum(sum(r.get(k, 0.0) for k in ("sample_s", "reward_s", "pack_s", "buffer_put_s"))
                           for r in finished)
                metrics["rollout_idle_fraction"] = max(0.0, 1 - busy / (elapsed * max(1, len(self.rollouts))))
                dropped = stats["dropped_stale"] - self.counts.get("_stale_dropped", 0)
                self.counts["_stale_dropped"] = stats["dropped_stale"]
                metrics["count/stale_dropped"] = dropped
                self.counts["stale_dropped"] += dropped
                state["rollout_rounds"] = rounds
                self._finish_iteration(sink, iteration, version, metrics, lambda: weights)
                iteration += 1
                finished = []
                t_iter = time.perf_counter()
                before = len(self.rollouts)
                self._apply_scaling(retire=retire)
                for w in range(before, len(self.rollouts)):
                    submit(w)
                rows = per_worker * (len(self.rollouts) - len(retiring))
                if iteration < cfg.iterations and not state.get("stopped_by"):
                    learn = rt.call(self.learner, "update", cfg.seed, iteration, rows,
                                    max(0, version - cfg.max_policy_lag))
            settle_retired()
        for w, (future, _) in pending.items():  # let in-flight rollouts finish into the buffer, then stop
            try:
                rt.get(future, timeout_s=r.timeout_s)
            except Exception:  # noqa: BLE001 - the run is over; a late failure changes nothing
                pass

    def _iteration_metrics(self, update: dict, rollouts: list[dict], elapsed: float, rollout_s: float,
                           learn_s: float) -> dict:
        trajectories = sum(r["trajectories"] for r in rollouts)
        failures = sum(r["failures"] for r in rollouts)
        reward_s = max((r.get("reward_s", 0.0) for r in rollouts), default=0.0)
        metrics = dict(update)
        metrics.update({
            "iteration_s": elapsed, "trajectories_per_s": trajectories / elapsed if elapsed > 0 else math.nan,
            "reward_samples_per_s": trajectories / reward_s if reward_s > 0 else math.nan,
            "phase/rollout_s": rollout_s, "phase/learn_s": learn_s,
            "phase/weight_sync_s": getattr(self, "publish_s", 0.0),
            "phase/sample_s": max((r.get("sample_s", 0.0) for r in rollouts), default=0.0),
            "phase/reward_s": reward_s,
            "weight_publish_s": getattr(self, "publish_s", 0.0),
            "weight_load_s": max((r.get("weight_sync_s", 0.0) for r in rollouts), default=0.0),
            "weight_sync_s": getattr(self, "publish_s", 0.0) + max((r.get("weight_sync_s", 0.0) for r in rollouts),
                                                                   default=0.0),
            "count/reward_failures": failures, "count/trajectories": update.get("trajectories", 0),
            "count/rollout_restarts": self.counts["rollout_restarts"] - self.counts.get("_rollout_restarts", 0),
            "policy_lag": update.get("policy_lag_mean", 0.0)})
        self.counts["_rollout_restarts"] = self.counts["rollout_restarts"]
        self.counts["reward_failures"] += failures
        return metrics

    def _summary(self, wall_s: float) -> dict:
        s = self.state
        learn = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        throughput = [m["trajectories_per_s"] for m in learn if math.isfinite(m.get("trajectories_per_s", math.nan))]
        counts = {k: v for k, v in self.counts.items() if not k.startswith("_")}
        counts.update({k: v for k, v in self._reward_counts().items() if k in counts})
        return {"iterations": s.get("iteration", 0),
                "trajectories_per_s": float(np.median(throughput)) if throughput else math.nan,
                "reward_first": s.get("reward_first"), "reward_last": s.get("reward_last"),
                "val_reward_pretrained": s.get("val_reward_pretrained"), "val_reward_best": s.get("val_reward_best"),
                "val_best_iteration": s.get("val_best_iteration", 0), "val_history": s.get("val_history", []),
                "val_sample_history": s.get("val_sample_history", []),
                "trajectories": s.get("trajectories", 0), "wall_s": wall_s, "train_wall_s": s.get("wall_s"),
                "mode": self.config.mode, "stopped_by": s.get("stopped_by", "iterations"), "events": counts}

    def close(self) -> None:
        rt = self.runtime
        for handle in getattr(self, "rollouts", []):
            rt.kill(handle)
        for name in ("learner", "buffer"):
            if hasattr(self, name):
                rt.kill(getattr(self, name))
        if self.server is not None:
            self.server.stop()
            self.server = None
