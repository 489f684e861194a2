"""Pre-training on online synthetic data (`data.source: online`): steps, not epochs.

The run is `train.steps` optimizer steps. Step s trains on `OnlineSyntheticStream.batch(s)` of
this rank: a pure function of (train.seed, rank, s), so nothing about the data needs saving and
a run resumed from its checkpoint at step k continues with exactly the batches the uninterrupted
run would have seen (`tests/test_online_pretrain.py` checks bit-identical weights). Every
`train.eval_every` steps (and at the end, and when `train.time_limit_s` runs out) the loop
measures the validation loss on the fixed held-out set (made once at start-up), logs to
TensorBoard and `metrics.jsonl`, and writes `checkpoints/step_NNNNNNNN/`.

The teacher-forcing step, the model and optimizer set-up, evaluation and DDP wiring are
`learner.pretrain.Pretrainer`'s; this class replaces its data and its loop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from learner.online_data import BatchPrefetcher, OnlineBatch, OnlineSyntheticStream
from learner.pretrain import DataConfig, Pretrainer, PretrainConfig, WorkerContext
from policy.checkpoint import save_checkpoint, step_dir


@dataclass
class RoundMetrics:
    """What happened between two validations of an online run."""

    step: int
    train_loss: float  # mean over the round's steps and ranks
    val_loss: float
    val_token_accuracy: float
    lr: float
    seconds: float  # the whole round: steps, validation and checkpoint
    step_seconds: float  # data + training steps, up to the point where every rank has finished them
    data_seconds: float  # waiting for batches (making them, without prefetching), mean over ranks
    train_samples: int  # training samples of the round, summed over ranks (degenerate draws dropped)
    drawn_samples: int  # samples drawn, before degenerate ones were dropped

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.step_seconds if self.step_seconds > 0 else float("nan")

    @property
    def data_fraction(self) -> float:
        return self.data_seconds / self.step_seconds if self.step_seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, row: dict) -> "RoundMetrics":
        return cls(**{f.name: (int if f.type == "int" else float)(row[f.name]) for f in fields(cls)})


class OnlinePretrainer(Pretrainer):
    """Teacher forcing on `OnlineSyntheticStream` batches for `train.steps` steps; resumes exactly."""

    def __init__(self, config: PretrainConfig, context: WorkerContext | None = None,
                 resume_from: Path | None = None):
        if isinstance(config.data, DataConfig):
            raise ValueError("OnlinePretrainer needs data.source: online")
        if config.train.steps is None:
            raise ValueError("data.source online needs train.steps (an online run has no epochs)")
        checkpoint = self._setup_model(config, context, resume_from)
        self.stream = OnlineSyntheticStream(config.data, self.vocab, config.train.batch_size, config.train.seed,
                                            self.ctx.rank, self.ctx.world_size, self.device, encode=self.encode,
                                            encode_batch=config.encoder.batch_size)
        self.val_batches = self.stream.validation_batches()
        held_out = len(self.stream.pool.held_out)
        if held_out == 0:
            raise ValueError("data.held_out names no structure: an online run needs a validation set")
        self._setup_optimizer(config.train.steps, checkpoint)

    def image_tokens(self, batch: OnlineBatch, split: str) -> torch.Tensor:
        return batch.image_tokens

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy per token, token accuracy) over the held-out set, all ranks."""
        return self._evaluate_batches(self.val_batches)

    # ---- loop ---------------------------------------------------------------------------------
    def _stop_now(self, started: float) -> bool:
        """Whether `train.time_limit_s` has run out, agreed by all ranks (rank 0's clock decides)."""
        limit = self.config.train.time_limit_s
        if limit is None:
            return False
        flag = torch.tensor([float(time.perf_counter() - started > limit)], device=self.device)
        if self.ctx.world_size > 1 and dist.is_initialized():
            dist.broadcast(flag, 0)
        return bool(flag.item())

    def fit(self) -> list[RoundMetrics]:
        """Train up to `train.steps` (or the time limit); returns the metrics of the rounds run."""
        train = self.config.train
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json")))
        history: list[RoundMetrics] = []
        started = time.perf_counter()
        depth = self.config.data.prefetch_chunks
        prefetcher = BatchPrefetcher(self.stream, self.step, train.steps, depth) if depth else None
        try:
            if self.step == 0:
                val_loss, val_acc = self.evaluate()
                if self.writer is not None:
                    self.writer.add_scalar("val/loss", val_loss, 0)
                    self.writer.add_scalar("val/token_accuracy", val_acc, 0)
            round_start, losses, rows, drawn, data_s = time.perf_counter(), [], 0, 0, 0.0
            while self.step < train.steps:
                before = time.perf_counter()
                batch = prefetcher.next(self.step) if prefetcher else self.stream.batch(self.step)
                data_s += time.perf_counter() - before  # with prefetching: the time spent waiting for it
                losses.append(self.train_step(batch))
                rows += batch.size
                drawn += batch.drawn
                stop = self._stop_now(started)
                if self.step % train.eval_every == 0 or self.step == train.steps or stop:
                    history.append(self._round(round_start, losses, rows, drawn, data_s))
                    round_start, losses, rows, drawn, data_s = time.perf_counter(), [], 0, 0, 0.0
                if stop:
                    break
        finally:
            if prefetcher is not None:
                prefetcher.close()
            self.stream.close()
            if self.writer is not None:
                self.writer.close()
        return history

    def _round(self, round_start: float, losses: list[float], rows: int, drawn: int, data_s: float) -> RoundMetrics:
        loss_sum, batches, samples, drawn_sum, data_sum = self._sum_over_ranks(
            torch.tensor([sum(losses), len(losses), rows, drawn, data_s], dtype=torch.float64)).tolist()
        step_seconds = time.perf_counter() - round_start
        val_loss, val_acc = self.evaluate()
        metrics = RoundMetrics(self.step, loss_sum / max(batches, 1), val_loss, val_acc,
                               self.scheduler.get_last_lr()[0], time.perf_counter() - round_start, step_seconds,
                               data_sum / self.ctx.world_size, round(samples), round(drawn_sum))
        checkpoint = None
        if self.ctx.is_main:
            for tag, value in (("round/train_loss", metrics.train_loss), ("round/samples_per_s", metrics.samples_per_s),
                               ("round/data_fraction", metrics.data_fraction),
                               ("round/kept_fraction", metrics.train_samples / max(metrics.drawn_samples, 1)),
                               ("val/loss", metrics.val_loss), ("val/token_accuracy", metrics.val_token_accuracy)):
                self.writer.add_scalar(tag, value, self.step)
            self.writer.flush()
            checkpoint = self.save_step(metrics)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics.as_dict()) + "\n")
        self.ctx.report(metrics.as_dict(), checkpoint)
        return metrics

    def save_step(self, metrics: RoundMetrics) -> Path:
        return save_checkpoint(step_dir(self.out_dir / "checkpoints", self.step), self.policy,
                               encoder=self.config.encoder.model_dump(), train=self.config.model_dump(mode="json"),
                               epoch=0, step=self.step, metrics=metrics.as_dict(), trainer_state=self._trainer_state())


def make_trainer(config: PretrainConfig, context: WorkerContext | None = None,
                 resume_from: Path | None = None) -> Pretrainer:
    """The trainer for a config: `OnlinePretrainer` for `data.source: online`, else `Pretrainer`."""
    cls = Pretrainer if isinstance(config.data, DataConfig) else OnlinePretrainer
    return cls(config, context, resume_from)
