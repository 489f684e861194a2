"""`init: pretrain:<preset>` for `matrl train`: make the starting policy when none is given.

Renders a synthetic dataset of the chosen structures (`learner.datagen`, resumable) and pre-trains
the `pretrain_<preset>.yaml` policy on it (`learner.pretrain`, resumable), all under
`RUN/pretrain/`; a second call finds the finished checkpoint and returns it at once. This is what
lets the tiny preset run from a fresh clone in one command.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from matrl.config import load_config


class BootstrapConfig(BaseModel):
    """Data and length of the bootstrap pre-training (used only when `init` is `pretrain:<preset>`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    graphs: list[str] | None = Field(None, description="library graphs to pre-train on (None: the RL targets' "
                                                       "graphs, or the whole library)")
    generated: int = Field(4, ge=0, description="random structures added (they fill the val/test splits)")
    per_graph: int = Field(64, ge=4, description="samples per structure")
    res: int = Field(64, description="render resolution")
    epochs: int | None = Field(None, ge=1, description="None: the preset's")
    torch_threads: int | None = Field(None, ge=1)


def bootstrap_policy(preset: str, run_dir: str | Path, config: BootstrapConfig, seed: int = 0,
                     use_ray: bool = True) -> Path:
    """The final checkpoint of pre-training `preset` on freshly rendered data under `run_dir/pretrain`."""
    from graph_executor.library import library_graphs, load_library_graph
    from learner.datagen import GenDataConfig, generate, with_generated_graphs
    from learner.pretrain import PretrainConfig, Pretrainer
    from policy.checkpoint import latest_checkpoint

    root = Path(run_dir) / "pretrain"
    data_dir, out_dir = root / "data", root / "run"
    overrides = {"out_dir": str(out_dir), "data.root": str(data_dir), "train.seed": seed}
    if config.epochs is not None:
        overrides["train.epochs"] = config.epochs
    if config.torch_threads is not None:
        overrides["train.torch_threads"] = config.torch_threads
    pretrain_config = load_config(PretrainConfig, "pretrain", preset, overrides)
    done = latest_checkpoint(out_dir / "checkpoints")
    if done is not None and done.name == f"epoch_{pretrain_config.train.epochs:04d}":
        return done
    names = config.graphs
    graphs = ({n: (load_library_graph(n), "library") for n in names} if names
              else {n: (g, "library") for n, g in library_graphs().items()})
    graphs = with_generated_graphs(graphs, config.generated, seed)
    print(f"[bootstrap] rendering {len(graphs)} structures x {config.per_graph} samples at {config.res}²", flush=True)
    generate(GenDataConfig(out=data_dir, per_graph=config.per_graph, res=config.res, seed=seed), graphs,
             use_ray=use_ray)
    print(f"[bootstrap] pre-training the '{preset}' policy for {pretrain_config.train.epochs} epochs", flush=True)
    Pretrainer(pretrain_config).fit()
    checkpoint = latest_checkpoint(out_dir / "checkpoints")
    if checkpoint is None:
        raise RuntimeError(f"pre-training wrote no checkpoint under {out_dir}")
    return checkpoint
