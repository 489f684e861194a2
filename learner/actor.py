"""The learner: PPO updates on what the replay buffer holds, checkpoints, and its Ray actor shell.

`Learner` wraps `learner.ppo.PPOLearner` with what a job needs around it: building the policy from a
checkpoint, pulling rows from the buffer (on-policy: all of them; asynchronous: a fixed number
within the staleness bound), seeding each update's minibatch order from (job seed, iteration) so
a resumed run repeats the uninterrupted one, and RL checkpoints:

    DIR/model.safetensors, config.json   the policy (loadable by `policy.checkpoint.load_policy`)
    DIR/trainer_state.pt                 value network, frozen reference, optimiser, policy
                                         version, and the job's own state (iteration, best
                                         validation reward, ...)

`LearnerShell` is the Ray actor body (GPU when the job gives it one).
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import torch

from learner.ppo import PPOConfig, PPOLearner
from policy.checkpoint import load_policy, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from policy.model import MaterialPolicy


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def update_generator(seed: int, iteration: int) -> torch.Generator:
    """The minibatch-order RNG of one update: a function of (seed, iteration) only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(iteration)) & 0x7FFFFFFFFFFF)


class Learner:
    def __init__(self, init: str | Path, ppo: PPOConfig = PPOConfig(), device: str = "auto",
                 torch_threads: int | None = None, resume: str | Path | None = None, seed: int = 0):
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        torch.manual_seed(seed)  # the value head's fresh weights are a function of the job seed
        self.device = resolve_device(device)
        policy, info = load_policy(resume or init, self.device)
        self.encoder = info.encoder
        self.job_state: dict = {}
        # the initial policy is the frozen reference; a resumed run restores its saved reference
        self.ppo = PPOLearner(policy, ppo, device=self.device)
        if resume is not None:
            state = load_trainer_state(resume)
            self.ppo.load_state_dict(state["ppo"])
            self.job_state = dict(state.get("job", {}))
            if "rng" in state:
                set_rng_state(state["rng"])

    @property
    def version(self) -> int:
        return self.ppo.version

    @property
    def policy(self) -> MaterialPolicy:
        return self.ppo.policy

    def weights(self) -> dict[str, torch.Tensor]:
        return self.ppo.weights()

    def update(self, table: pa.Table, seed: int, iteration: int) -> dict[str, float]:
        return self.ppo.update(table, update_generator(seed, iteration))

    def save(self, path: str | Path, job_state: dict, metrics: dict | None = None) -> Path:
        state = {"ppo": self.ppo.state_dict(), "job": job_state, "rng": rng_state()}
        return save_checkpoint(path, self.ppo.policy, encoder=self.encoder, train={"kind": "ppo", **job_state},
                               epoch=int(job_state.get("iteration", 0)), step=self.ppo.version,
                               metrics=metrics or {}, trainer_state=state)


class LearnerShell:
    """Ray actor body. Takes rows from the buffer actor (or a local `ReplayBuffer`) itself."""

    def __init__(self, init: str, ppo: PPOConfig, buffer, device: str = "auto", torch_threads: int | None = None,
                 resume: str | None = None, seed: int = 0):
        self.learner = Learner(init, ppo, device, torch_threads, resume, seed)
        self.buffer = buffer

    def ready(self) -> dict:
        import os

        return {"pid": os.getpid(), "version": self.learner.version, "device": str(self.learner.device),
                "job_state": self.learner.job_state}

    def _buffer(self, method: str, *args):
        import ray

        if isinstance(self.buffer, ray.actor.ActorHandle):
            return ray.get(getattr(self.buffer, method).remote(*args))
        return getattr(self.buffer, method)(*args)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.learner.weights()

    def version(self) -> int:
        return self.learner.version

    def update(self, seed: int, iteration: int, rows: int | None = None, min_version: int | None = None,
               wait_s: float = 600.0) -> dict[str, float]:
        """One PPO update. `rows` None: everything in the buffer (on-policy). Otherwise wait until
        `rows` rows newer than `min_version` are there (asynchronous mode) and take those."""
        start = time.perf_counter()
        if rows is None:
            table = self._buffer("take_all")
        else:
            import pyarrow as pa

            parts, have = [], 0
            deadline = time.monotonic() + wait_s
            while have < rows:  # rows that turn stale while waiting are dropped: wait for fresh ones
                if min_version is not None:
                    self._buffer("drop_stale", min_version)
                if not self._buffer("wait_for_rows", rows - have, max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"the replay buffer did not reach {rows} rows within {wait_s:g}s")
                part = self._buffer("take", rows - have, min_version)
                parts.append(part)
                have += part.num_rows
            table = pa.concat_tables(parts).unify_dictionaries().combine_chunks() if len(parts) > 1 else parts[0]
        waited = time.perf_counter() - start
        metrics = self.learner.update(table, seed, iteration)
        metrics["wait_s"] = waited
        metrics["version"] = self.learner.version
        return metrics

    def save(self, path: str, job_state: dict, metrics: dict | None = None) -> str:
        return str(self.learner.save(path, job_state, metrics))
