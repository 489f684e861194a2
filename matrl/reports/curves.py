"""Training curves of an RL run as a PNG: reward per iteration (and its running mean), greedy
validation reward, and the policy's KL and entropy, read from `RUN/metrics.jsonl` and
`RUN/summary.json`."""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run} a `matrl train` run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def running_mean(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        finite = [a for a in acc if math.isfinite(a)]
        out.append(sum(finite) / len(finite) if finite else math.nan)
    return out


def plot_run(run: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write the curves of `run` to `out` (default RUN/curves.png) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    rows = read_metrics(run)
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    its = [r["iteration"] for r in rows]
    reward = [r.get("reward_mean", math.nan) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(its, reward, color="0.7", lw=1, label="mean reward of the iteration's trajectories")
    ax.plot(its, running_mean(reward, max(3, len(its) // 10)), color="C0", lw=2, label="running mean")
    ax.set_xlabel("iteration")
    ax.set_ylabel("appearance reward")
    ax.set_title("training reward (sampled, top-p)")
    ax.legend(fontsize=8)
    ax = axes[1]
    history = summary.get("val_history") or [[r["iteration"], r["val_reward"]] for r in rows if "val_reward" in r]
    if history:
        ax.plot([h[0] for h in history], [h[1] for h in history], "o-", color="C1", label="greedy, held-out targets")
        if summary.get("val_reward_pretrained") is not None:
            ax.axhline(summary["val_reward_pretrained"], color="0.5", ls="--", lw=1, label="pre-trained policy")
        ax.legend(fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_title("validation reward")
    ax = axes[2]
    ax.plot(its, [r.get("kl_ref", math.nan) for r in rows], color="C2", label="KL to reference")
    ax.plot(its, [r.get("approx_kl", math.nan) for r in rows], color="C3", label="approx KL per update")
    ax.set_xlabel("iteration")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax2 = ax.twinx()
    ax2.plot(its, [r.get("entropy", math.nan) for r in rows], color="C4", ls=":", label="entropy")
    ax2.set_ylabel("entropy (nats)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8)
    ax.set_title("policy drift")
    fig.suptitle(title or f"{run.name}: {len(rows)} iterations")
    fig.tight_layout()
    out = Path(out) if out else run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
