"""Supervised pre-training of the parameter policy by teacher forcing (paper §4.2).

AdamW at 1e-4, gradient-norm clipping at 1.0, linear warm-up then cosine decay; per epoch the mean
cross-entropy per token and the token accuracy on the validation split (held-out structures), a
TensorBoard log and a checkpoint from which an interrupted run resumes.

`Pretrainer` is the whole loop for one process. Under Ray Train (`learner.pretrain_ray`) every
worker runs the same loop with a `WorkerContext` that wraps the model in DDP and names its rank;
without one it runs in this process. The image encoder is frozen, so by default each image is
encoded once and its tokens are kept (half precision) for all epochs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from policy.checkpoint import (epoch_dir, latest_checkpoint, load_policy, load_trainer_state, rng_state,
                                save_checkpoint, set_rng_state)
from learner.dataset import DatasetError, StreamingSyntheticDataset, SyntheticDataset, load_graphs
from policy.batching import PolicyBatch, collate
from policy.encoders import EncoderConfig  # noqa: F401  (part of the pre-training config)
from policy.model import MaterialPolicy, PolicyConfig
from policy.tokenizer import GraphTokenizer, Vocabulary


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    root: Path = Field(description="dataset directory written by `matrl gen-data`")
    train_split: str = "train"
    val_split: str = "val"
    max_train_samples: int | None = Field(None, gt=0)
    max_val_samples: int | None = Field(None, gt=0)
    streaming: bool = Field(False, description="stream training shards instead of holding the split in memory")
    shuffle_buffer: int = Field(2048, gt=0, description="rows mixed across shards when streaming")


class ModelConfig(_Strict):
    """Sizes of the policy; defaults are `policy.model.PolicyConfig`'s (the paper's 48/4/4 and 96/4/4)."""

    node_dim: int = PolicyConfig.node_dim
    node_layers: int = PolicyConfig.node_layers
    node_heads: int = PolicyConfig.node_heads
    dim: int = PolicyConfig.dim
    layers: int = PolicyConfig.layers
    heads: int = PolicyConfig.heads
    mlp_ratio: int = PolicyConfig.mlp_ratio
    max_slots: int = PolicyConfig.max_slots
    dropout: float = PolicyConfig.dropout


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int | None = Field(None, ge=0, description="default: warmup_fraction of all steps")
    warmup_fraction: float = Field(0.05, ge=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")


class TrainConfig(_Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    seed: int = 0
    device: str = "auto"
    log_every: int = Field(20, gt=0)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    torch_threads: int | None = Field(None, gt=0, description="intra-op threads per process "
                                      "(None: torch's default); 1 avoids thrashing on a shared CPU")


class DistributedConfig(_Strict):
    """Ray Train (`matrl pretrain --ray`): DDP over `num_workers` processes."""

    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    cpus_per_worker: int = Field(1, gt=0)


class PretrainConfig(_Strict):
    out_dir: Path
    data: DataConfig
    encoder: EncoderConfig = EncoderConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _streaming(self) -> "PretrainConfig":
        if self.data.streaming and (self.encoder.cache_tokens or self.data.max_train_samples):
            raise ValueError("data.streaming reads every training shard and encodes images per batch: "
                             "it needs encoder.cache_tokens: false and no data.max_train_samples")
        return self


@dataclass
class WorkerContext:
    """Where this copy of the loop runs: its rank, device, how to wrap the model, whom to report to."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m
    report: Callable[[dict, Path | None], None] = lambda metrics, checkpoint: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear from 1/warmup to 1 over `warmup_steps`, then cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _Examples(torch.utils.data.Dataset):
    """Graph id and tokens of the rows of a split used for training (all, or a seeded random subset
    of `limit`), with the decoded image only when it is needed."""

    def __init__(self, source: SyntheticDataset, limit: int | None, seed: int, with_images: bool):
        self.source = source
        rows = range(len(source))
        self.rows = sorted(random.Random(seed).sample(rows, limit)) if limit and limit < len(source) else list(rows)
        graph_ids, tokens = source.graph_ids, source.table.column("tokens").to_pylist()
        self.graph_ids = [graph_ids[r] for r in self.rows]
        self.tokens = [tokens[r] for r in self.rows]
        self.with_images = with_images

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> torch.Tensor:
        return self.source[self.rows[index]]["image"]

    def __getitem__(self, index: int) -> dict:
        item = {"index": index, "graph_id": self.graph_ids[index], "tokens": self.tokens[index]}
        if self.with_images:
            item["image"] = self.image(index)
        return item


@dataclass
class Batch:
    indices: torch.Tensor | None  # rows of the split (for cached image tokens); None when streaming
    policy: PolicyBatch
    images: torch.Tensor | None


@dataclass
class EpochMetrics:
    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_token_accuracy: float
    lr: float
    seconds: float  # the whole epoch: training, validation and checkpoint
    train_seconds: float  # the training steps only, up to the point where every rank has finished them
    train_samples: int  # training rows processed in the epoch, summed over all ranks

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, row: dict) -> "EpochMetrics":
        """From `as_dict`'s output or a row of Ray's metrics dataframe (numpy scalars, extra columns)."""
        return cls(**{f.name: (int if f.type == "int" else float)(row[f.name]) for f in fields(cls)})


class Pretrainer:
    """Teacher-forcing pre-training of `MaterialPolicy` on a synthetic dataset; resumes from its run dir."""

    def __init__(self, config: PretrainConfig, context: WorkerContext | None = None,
                 resume_from: Path | None = None):
        self.config = config
        self.ctx = context or WorkerContext(device=resolve_device(config.train.device))
        self.device = self.ctx.device
        self.out_dir = Path(config.out_dir)
        if config.train.torch_threads is not None:
            torch.set_num_threads(config.train.torch_threads)
        torch.manual_seed(config.train.seed)

        checkpoint = resume_from or latest_checkpoint(self.out_dir / "checkpoints")
        if checkpoint is not None:
            self.policy, info = load_policy(checkpoint, self.device)  # its sizes win over config.model
            self.start_epoch, self.step = info.epoch + 1, info.step
            vocab = Vocabulary.from_dict(info.policy.vocab)
        else:
            self.policy, self.start_epoch, self.step, vocab = None, 1, 0, Vocabulary.from_registry()

        self.encoder = config.encoder.build().to(self.device)
        if self.policy is None:
            policy_config = PolicyConfig.for_encoder(self.encoder, vocab, **config.model.model_dump())
            self.policy = MaterialPolicy(policy_config).to(self.device)

        graphs = load_graphs(config.data.root)
        self.structures = {gid: GraphTokenizer(g, vocab).structure() for gid, g in graphs.items()}
        cache = config.encoder.cache_tokens
        data = config.data
        if data.streaming:
            self.train_set = StreamingSyntheticDataset(data.root, data.train_split, data.shuffle_buffer,
                                                       config.train.seed, self.ctx.rank, self.ctx.world_size)
        else:
            self.train_set = _Examples(SyntheticDataset(data.root, data.train_split), data.max_train_samples,
                                       config.train.seed, with_images=not cache)
        self.val_set = _Examples(SyntheticDataset(data.root, data.val_split), data.max_val_samples,
                                 config.train.seed, with_images=not cache)
        train_rows = sum(self.train_set.rows_per_rank()) if data.streaming else len(self.train_set)
        if train_rows == 0 or len(self.val_set) == 0:
            raise DatasetError(f"{data.root}: the train and val splits must both hold samples "
                             f"(train {train_rows}, val {len(self.val_set)})")
        self.token_cache = ({"train": self._encode_all(self.train_set, "train"),
                             "val": self._encode_all(self.val_set, "val")}
                            if cache else None)

        self.sampler = None if data.streaming else DistributedSampler(
            self.train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True,
            seed=config.train.seed)
        self.train_loader = DataLoader(self.train_set, batch_size=config.train.batch_size, sampler=self.sampler,
                                       collate_fn=self._collate, num_workers=config.train.num_workers)
        self.epoch_steps = {epoch: self._steps_in_epoch(epoch) for epoch in range(1, config.train.epochs + 1)}
        val_indices = list(range(self.ctx.rank, len(self.val_set), self.ctx.world_size))
        self.val_loader = DataLoader(torch.utils.data.Subset(self.val_set, val_indices),
                                     batch_size=config.train.eval_batch_size, collate_fn=self._collate,
                                     num_workers=config.train.num_workers)

        opt = config.optim
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=opt.lr, betas=opt.betas,
                                           weight_decay=opt.weight_decay)
        self.total_steps = sum(self.epoch_steps.values())
        warmup = opt.warmup_steps if opt.warmup_steps is not None else round(opt.warmup_fraction * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.total_steps, max(1, warmup), opt.min_lr_ratio))
        if checkpoint is not None:
            state = load_trainer_state(checkpoint)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
        self.model = self.ctx.wrap_model(self.policy)
        self.writer = None

    # ---- data ---------------------------------------------------------------------------------
    def _steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps of an epoch; when streaming, the fewest batches any rank has, so that
        DDP ranks stop together."""
        if not isinstance(self.train_set, StreamingSyntheticDataset):
            return len(self.train_loader)
        self.train_set.set_epoch(epoch)
        rows = self.train_set.rows_per_rank(self.config.train.num_workers)
        if min(rows) == 0:
            raise DatasetError(f"{self.config.data.root}: some rank streams no training shard in epoch {epoch} "
                             f"(rows per rank {rows}); use smaller shards or fewer ranks/loader workers")
        return min(-(-r // self.config.train.batch_size) for r in rows)

    def _collate(self, items: list[dict]) -> Batch:
        tokens = [it["tokens"].tolist() if torch.is_tensor(it["tokens"]) else it["tokens"] for it in items]
        policy_batch = collate([self.structures[it["graph_id"]] for it in items], tokens)
        images = torch.stack([it["image"] for it in items]) if "image" in items[0] else None
        indices = torch.tensor([it["index"] for it in items]) if "index" in items[0] else None
        return Batch(indices, policy_batch, images)

    def _encode_all(self, examples: _Examples, split: str) -> torch.Tensor:
        """Image tokens (N, T, C) in half precision for every example: computed once, kept in the run
        directory (so a resumed run does not encode again), recomputed when rows or encoder differ."""
        rows = examples.source.table.select(["graph_id", "sample_index", "seed"]).take(examples.rows).to_pydict()
        fingerprint = hashlib.sha1(json.dumps([self.config.encoder.name, self.config.encoder.open_clip_model,
                                               self.config.encoder.pretrained, rows]).encode()).hexdigest()
        path = self.out_dir / "image_tokens" / f"{split}.safetensors"
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("fingerprint") == fingerprint:
                    return f.get_tensor("tokens")
        out = []
        with torch.no_grad():
            starts = range(0, len(examples), self.config.encoder.batch_size)
            for lo in tqdm(starts, desc=f"encoding {split} images", unit="batch", disable=not self.ctx.is_main):
                hi = min(lo + self.config.encoder.batch_size, len(examples))
                images = torch.stack([examples.image(i) for i in range(lo, hi)]).to(self.device)
                out.append(self.encoder(images).tokens.to(torch.float16).cpu())
        tokens = torch.cat(out)
        if self.ctx.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
            save_file({"tokens": tokens}, str(tmp), metadata={"fingerprint": fingerprint})
            os.replace(tmp, path)
        return tokens

    def image_tokens(self, batch: Batch, split: str) -> torch.Tensor:
        if self.token_cache is not None:
            return self.token_cache[split][batch.indices].to(self.device, torch.float32)
        with torch.no_grad():
            return self.encoder(batch.images.to(self.device)).tokens

    # ---- steps --------------------------------------------------------------------------------
    def _logits(self, batch: Batch, split: str) -> tuple[torch.Tensor, PolicyBatch]:
        pb = batch.policy.to(self.device)
        return self.model(pb, self.image_tokens(batch, split)), pb

    def train_step(self, batch: Batch) -> float:
        self.model.train()
        logits, pb = self._logits(batch, "train")
        loss = F.cross_entropy(logits[pb.slot_mask].float(), pb.tokens[pb.slot_mask])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.writer is not None and self.step % self.config.train.log_every == 0:
            self.writer.add_scalar("train/loss", loss.item(), self.step)
            self.writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
            self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
        return loss.item()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy per token, token accuracy) over the whole validation split, all ranks."""
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64)
        for batch in self.val_loader:
            logits, pb = self._logits(batch, "val")
            real_logits, targets = logits[pb.slot_mask].float(), pb.tokens[pb.slot_mask]
            totals += torch.tensor([F.cross_entropy(real_logits, targets, reduction="sum").item(),
                                    (real_logits.argmax(-1) == targets).sum().item(), targets.numel()],
                                   dtype=torch.float64)
        loss_sum, correct, count = self._sum_over_ranks(totals).tolist()
        return loss_sum / max(count, 1), correct / max(count, 1)

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.ctx.world_size > 1 and dist.is_initialized():
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()

    # ---- loop ---------------------------------------------------------------------------------
    def fit(self) -> list[EpochMetrics]:
        """Train the remaining epochs; returns the metrics of the epochs run by this call."""
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json")))
        history = []
        try:
            if self.start_epoch == 1:
                val_loss, val_acc = self.evaluate()  # every rank: evaluate() all-reduces
                if self.writer is not None:
                    self.writer.add_scalar("val/loss", val_loss, 0)
                    self.writer.add_scalar("val/token_accuracy", val_acc, 0)
            for epoch in range(self.start_epoch, self.config.train.epochs + 1):
                history.append(self._epoch(epoch))
        finally:
            if self.writer is not None:
                self.writer.close()
        return history

    def _epoch(self, epoch: int) -> EpochMetrics:
        start = time.perf_counter()
        (self.sampler or self.train_set).set_epoch(epoch)
        losses, rows = [], 0
        for batch in itertools.islice(self.train_loader, self.epoch_steps[epoch]):
            losses.append(self.train_step(batch))
            rows += batch.policy.size
        loss_sum, batches, samples = self._sum_over_ranks(
            torch.tensor([sum(losses), len(losses), rows], dtype=torch.float64)).tolist()
        train_seconds = time.perf_counter() - start  # after the all-reduce: every rank has finished its steps
        val_loss, val_acc = self.evaluate()
        metrics = EpochMetrics(epoch, self.step, loss_sum / batches, val_loss, val_acc,
                               self.scheduler.get_last_lr()[0], time.perf_counter() - start, train_seconds,
                               round(samples))
        checkpoint = None
        if self.ctx.is_main:
            for tag, value in (("epoch/train_loss", metrics.train_loss), ("epoch/seconds", metrics.seconds),
                               ("epoch/samples_per_s", metrics.samples_per_s),
                               ("val/loss", metrics.val_loss), ("val/token_accuracy", metrics.val_token_accuracy)):
                self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()
            checkpoint = self.save(epoch, metrics)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics.as_dict()) + "\n")
        self.ctx.report(metrics.as_dict(), checkpoint)
        return metrics

    def save(self, epoch: int, metrics: EpochMetrics) -> Path:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": rng_state()}
        return save_checkpoint(epoch_dir(self.out_dir / "checkpoints", epoch), self.policy,
                               encoder=self.config.encoder.model_dump(), train=self.config.model_dump(mode="json"),
                               epoch=epoch, step=self.step, metrics=metrics.as_dict(), trainer_state=state)
