"""Pre-training on Ray Train: `TorchTrainer` runs the same loop (`Pretrainer`, or `OnlinePretrainer`
for online data, each rank drawing its own stream) on every worker with DDP.

Rank 0 writes checkpoints and TensorBoard logs to the run directory (as in a one-process run) and
also reports each epoch's (online: each round's) checkpoint to Ray Train, which persists it under
`<out_dir>/ray`. A worker group restarted by Ray resumes from Ray's latest checkpoint; a new job
resumes from the run dir.
"""

from __future__ import annotations

from pathlib import Path

import torch

from learner.pretrain import DataConfig, EpochMetrics, PretrainConfig, WorkerContext
from learner.pretrain_online import RoundMetrics, make_trainer


def _train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    config = PretrainConfig.model_validate(loop_config["config"])
    if not config.distributed.use_gpu:
        torch.set_num_threads(config.distributed.cpus_per_worker)
    context = ray.train.get_context()

    def report(metrics: dict, checkpoint: Path | None) -> None:
        ray_checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        name = Path(checkpoint).name if checkpoint else (
            f"epoch_{int(metrics['epoch']):04d}" if "epoch" in metrics else f"step_{int(metrics['step']):08d}")
        ray.train.report(metrics, checkpoint=ray_checkpoint, checkpoint_dir_name=name)

    restored = ray.train.get_checkpoint()
    worker = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                           device=ray.train.torch.get_device(), wrap_model=ray.train.torch.prepare_model,
                           report=report)
    resume_from = Path(restored.to_directory()) if restored is not None else None
    make_trainer(config, worker, resume_from=resume_from).fit()


def pretrain_on_ray(config: PretrainConfig) -> list[EpochMetrics] | list[RoundMetrics]:
    """Run pre-training with DDP over `config.distributed.num_workers` Ray Train workers (stored
    data: `EpochMetrics` per epoch; online data: `RoundMetrics` per validation round, every rank
    generating its own stream)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    stored = isinstance(config.data, DataConfig)
    update: dict = {"out_dir": Path(config.out_dir).resolve()}
    if stored:
        update["data"] = config.data.model_copy(update={"root": Path(config.data.root).resolve()})
    config = config.model_copy(update=update)
    dist = config.distributed
    backend = dist.backend if dist.backend != "auto" else ("nccl" if dist.use_gpu else "gloo")
    resources = {"CPU": dist.cpus_per_worker, **({"GPU": 1} if dist.use_gpu else {})}
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=dist.num_workers, use_gpu=dist.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend=backend),
        run_config=RunConfig(name="pretrain", storage_path=str(config.out_dir / "ray")),
    )
    result = trainer.fit()
    metrics = EpochMetrics if stored else RoundMetrics
    return [metrics.from_dict(row) for row in result.metrics_dataframe.to_dict("records")]
