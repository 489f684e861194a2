"""How much the reward moves when the reward CNN runs in bfloat16 (autocast) or TF32 instead of float32.

Measured on a CPU, where float32 is the reference: bfloat16 through torch.autocast (what
`RewardConfig.cnn_autocast="bfloat16"` does on any device) and TF32 emulated by rounding every
convolution's input and weights to TF32's 10-bit mantissa before float32 accumulation (what cuDNN
does with `RewardConfig.tf32` on a GPU), and, to bound it from above, the Gram matrices' features
too (the worker leaves those matmuls in float32).
Images: library graphs rendered at sampled parameters, scored against a render of another draw
of the same graph (rewards spread like a policy's samples around a matching structure) and of a
different graph.

    python benchmarks/reward_precision.py                 # 8 graphs x 16 samples at 256²
    python benchmarks/reward_precision.py --quick --json  # 3 graphs x 4 samples at 128²
"""

from __future__ import annotations

import argparse
import contextlib
import json

import numpy as np
import torch

import reward_service.metrics as metrics_module
from graph_executor.executor import Plan
from graph_executor.library import library_names, load_library_graph
from graph_executor.render import render_flash
from graph_executor.sampling import sample_parameters
from reward_service.metrics import AppearanceMetric


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to the nearest value with TF32's 10 explicit mantissa bits."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@contextlib.contextmanager
def emulated_tf32(metric: AppearanceMetric):
    """Convolutions see TF32-rounded inputs and weights; Gram matrices TF32-rounded features."""
    convs = [m for m in metric.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [m.weight.data.clone() for m in convs]
    for m in convs:
        m.weight.data = round_tf32(m.weight.data)
    hooks = [m.register_forward_pre_hook(lambda _m, inputs: tuple(round_tf32(t) for t in inputs)) for m in convs]
    plain_gram = metrics_module.gram
    metrics_module.gram = lambda features: plain_gram(round_tf32(features))
    try:
        yield
    finally:
        metrics_module.gram = plain_gram
        for h in hooks:
            h.remove()
        for m, w in zip(convs, saved):
            m.weight.data = w


def renders(name: str, n: int, seed: int, res: int) -> torch.Tensor:
    graph = load_library_graph(name)
    plan = Plan(graph)
    return render_flash(plan.run(plan.stack(sample_parameters(graph, n, seed)), res=res, seed=list(range(n))))


def rewards(metric: AppearanceMetric, images: torch.Tensor, target: torch.Tensor, mode: str) -> torch.Tensor:
    autocast = torch.bfloat16 if mode == "bfloat16" else None
    with emulated_tf32(metric) if mode == "tf32" else contextlib.nullcontext():
        pred = metric.describe(images, autocast=autocast)
        goal = metric.describe(target, autocast=autocast)
    return metric.reward(metric.terms(pred, goal))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", type=int, default=None, help="library graphs (8; --quick 3)")
    p.add_argument("--samples", type=int, default=None, help="samples per graph (16; --quick 4)")
    p.add_argument("--res", type=int, default=None, help="executor resolution (256; --quick 128)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON last")
    args = p.parse_args(argv)
    graphs = args.graphs or (3 if args.quick else 8)
    samples = args.samples or (4 if args.quick else 16)
    res = args.res or (128 if args.quick else 256)
    torch.set_num_threads(1)
    names = library_names()
    names = [names[i * len(names) // graphs] for i in range(graphs)]
    metric = AppearanceMetric()
    out = {mode: [] for mode in ("float32", "bfloat16", "tf32")}
    for k, name in enumerate(names):
        images = renders(name, samples, 1, res)
        own = renders(name, 1, 2, res)
        other = renders(names[(k + 1) % len(names)], 1, 2, res)
        for target in (own, other):
            for mode in out:
                out[mode].append(rewards(metric, images, target, mode))
    reference = torch.cat(out["float32"])
    summary = {"graphs": names, "samples": int(reference.numel()), "res": res,
               "reward_range": [float(reference.min()), float(reference.max())]}
    print(f"{len(names)} graphs x {samples} samples x 2 targets at {res}²; float32 rewards in "
          f"[{reference.min():.3f}, {reference.max():.3f}]")
    print(f"{'mode':10s} {'max |dR|':>10s} {'p99 |dR|':>10s} {'mean |dR|':>10s} {'rank corr':>10s}")
    for mode in ("bfloat16", "tf32"):
        values = torch.cat(out[mode])
        diff = (values - reference).abs().numpy()
        rank = float(np.corrcoef(np.argsort(np.argsort(values.numpy())),
                                 np.argsort(np.argsort(reference.numpy())))[0, 1])
        summary[mode] = {"max_abs": float(diff.max()), "p99_abs": float(np.quantile(diff, 0.99)),
                         "mean_abs": float(diff.mean()), "rank_correlation": rank}
        print(f"{mode:10s} {diff.max():10.5f} {np.quantile(diff, 0.99):10.5f} {diff.mean():10.5f} {rank:10.4f}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
