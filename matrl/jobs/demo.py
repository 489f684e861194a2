"""`matrl demo`: the whole pipeline, small, on an in-process Ray, ending in a Markdown report.

Synthetic data from the bundled library (Ray tasks) -> supervised pre-training of the policy ->
a reward service (Ray worker pool behind gRPC on loopback) -> greedy predictions on structures
never seen in training, scored through the service against random and ground-truth parameters.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from graph_executor.library import library_graphs
from matrl.config import load_config

class DemoConfig(BaseModel):
    """Sizes of the demo run; the defaults finish in a few minutes on two CPU cores."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Path("runs/demo")
    graphs_per_category: int = Field(1, ge=1, description="library graphs taken from each category")
    generated: int = Field(2, ge=0, description="random structures added to the library graphs")
    per_graph: int = Field(32, ge=4)
    res: int = 64
    epochs: int = Field(4, ge=1)
    reward_workers: int = Field(2, ge=1)
    eval_per_graph: int = Field(8, ge=1)
    num_cpus: int = Field(2, ge=1, description="CPUs of the in-process Ray")
    seed: int = 0


def pick_graphs(config: DemoConfig) -> dict:
    """The first `graphs_per_category` library graphs of every category, plus generated structures."""
    from learner.datagen import with_generated_graphs

    taken: dict[str, int] = {}
    picked = {}
    for gid, graph in sorted(library_graphs().items()):
        if taken.get(graph.category, 0) < config.graphs_per_category:
            taken[graph.category] = taken.get(graph.category, 0) + 1
            picked[gid] = (graph, "library")
    return with_generated_graphs(picked, config.generated, config.seed)


def run_demo(config: DemoConfig) -> Path:
    """Run every stage; returns the path of the report."""
    from policy.checkpoint import latest_checkpoint
    from learner.datagen import GenDataConfig, generate
    from learner.pretrain import PretrainConfig, Pretrainer
    from learner.pretrain_eval import evaluate_checkpoint, format_report
    from reward_service.client import RewardClient
    from reward_service.config import RewardConfig
    from reward_service.pool import PoolConfig

    from matrl.jobs.ray_runtime import init_ray
    from matrl.jobs.reward import start_background

    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    init_ray(num_cpus=config.num_cpus, log_to_driver=False)
    data_dir = config.out / "data"
    graphs = pick_graphs(config)
    print(f"[1/4] gen-data: {len(graphs)} structures x {config.per_graph} samples at {config.res}²")
    summary = generate(GenDataConfig(out=data_dir, per_graph=config.per_graph, res=config.res, seed=config.seed),
                       graphs, use_ray=True)

    print(f"[2/4] pretrain: {config.epochs} epochs of the tiny policy on CPU")
    pretrain_config = load_config(PretrainConfig, "pretrain", "tiny", {
        "out_dir": str(config.out / "pretrain"), "data.root": str(data_dir), "train.epochs": config.epochs,
        "train.seed": config.seed, "train.torch_threads": 1})
    history = Pretrainer(pretrain_config).fit()
    checkpoint = latest_checkpoint(config.out / "pretrain" / "checkpoints")

    print(f"[3/4] reward service: {config.reward_workers} Ray workers behind gRPC on 127.0.0.1")
    server = start_background(RewardConfig(res=config.res), PoolConfig(workers=config.reward_workers))
    port = server.server.port
    try:
        with RewardClient(f"127.0.0.1:{port}") as client:
            print("[4/4] evaluate greedy predictions on held-out structures through the service")
            report = evaluate_checkpoint(checkpoint, data_dir, split="test", max_per_graph=config.eval_per_graph,
                                         seed=config.seed, scorer=client)
        pool_status = server.run(server.pool.worker_stats(), 60)
    finally:
        server.stop()

    lines = ["# matrl demo report", "",
             f"{len(graphs)} structures ({config.graphs_per_category} per library category + "
             f"{config.generated} generated), {config.per_graph} samples each at {config.res}²; "
             f"{summary.kept} samples rendered this run, rejected: {summary.rejected or 'none'}.", "",
             "## Pre-training", "", "| epoch | train loss | val loss | val token accuracy | seconds |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {m.epoch} | {m.train_loss:.4f} | {m.val_loss:.4f} | {m.val_token_accuracy:.4f} | {m.seconds:.1f} |"
              for m in history]
    lines += ["", f"Checkpoint: `{checkpoint}`", "", "## Held-out structures (scored by the reward service)", "",
              format_report(report), "", "## Reward workers", "",
              "| worker | requests | samples | failures |", "| --- | --- | --- | --- |"]
    lines += [f"| {i} | {s.get('requests', 0)} | {s.get('samples', 0)} | {s.get('failures', 0)} |"
              for i, s in enumerate(pool_status)]
    lines += ["", f"Total wall time: {time.perf_counter() - started:.0f} s."]
    path = config.out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"report: {path}")
    return path
