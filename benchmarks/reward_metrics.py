"""Cost of the reward on CPU: backbone descriptor per image (EfficientNet-Lite0 as the reward runs it,
with BatchNorm folded and channels-last; the plain timm network it is built from; VGG19) at batch 1
and the request batch, and the RewardWorker end to end (execute + render + reward) on library graphs,
side by side.

    python benchmarks/reward_metrics.py [--quick] [--json]

VGG19 is timed with unweighted layers (its cost does not depend on the weight values; this host
cannot download them); it is never used unweighted for rewards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from graph_executor.library import library_names, load_library_graph
from graph_executor.sampling import sample_parameters
from policy.pretrained import load_efficientnet_lite0
from reward_service.backbones import Backbone, EfficientNetLite0Stages, VGG19PoolStages
from reward_service.config import MetricConfig, RewardConfig
from reward_service.metrics import AppearanceMetric
from reward_service.worker import RewardWorker, ScoreRequest


def _best_of(fn, repeats: int):
    """(seconds, result) of the fastest of `repeats` calls after one warm-up call."""
    fn()
    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        if best is None or seconds < best[0]:
            best = (seconds, result)
    return best


class PlainEfficientNetLite0Stages(Backbone):
    """The same stages from timm's network as loaded (BatchNorm layers, channels-first): the reference."""

    info = EfficientNetLite0Stages.info

    def __init__(self):
        super().__init__()
        self.net = load_efficientnet_lite0().requires_grad_(False)

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.net.forward_intermediates((images - 0.5) / 0.5, indices=[0, 1, 2, 3, 4], stop_early=True,
                                             intermediates_only=True)


def time_backbones(batches: tuple[int, ...], repeats: int) -> list[dict]:
    rows = []
    for name, backbone in (("efficientnet_lite0", EfficientNetLite0Stages()),
                           ("efficientnet_lite0 plain timm", PlainEfficientNetLite0Stages()),
                           ("vgg19 (unweighted, timing only)", VGG19PoolStages(allow_unweighted=True))):
        metric = AppearanceMetric(MetricConfig(backbone=backbone.info.name), backbone=backbone.eval())
        for batch in batches:
            images = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
            seconds, _ = _best_of(lambda: metric.describe(images), repeats)
            rows.append({"what": f"descriptor {name}", "batch": batch, "ms_per_image": 1000 * seconds / batch})
    return rows


def time_worker(batch: int, res: int, graphs: list[str], repeats: int) -> list[dict]:
    worker = RewardWorker(RewardConfig(res=res))
    target = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    rows = []
    for name in graphs:
        sets = sample_parameters(load_library_graph(name), batch, seed=0)
        request = ScoreRequest(f"lib:{name}", list(range(batch)), target, param_sets=sets)
        seconds, results = _best_of(lambda: worker.score(request), repeats)
        split = {k: 1000 * float(np.mean([r.timings[k] for r in results])) for k in ("execute", "render", "reward")}
        rows.append({"what": f"worker lib:{name} @{res}², {worker.config.samples_per_call}/call", "batch": batch, "ms_per_image": 1000 * seconds / batch,
                     "ok": sum(r.ok for r in results), **{f"{k}_ms": v for k, v in split.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--graphs", type=int, default=6, help="how many library graphs (sorted by name)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch, repeats = (4, 1) if args.quick else (16, 5)
    graphs = library_names()[:2 if args.quick else args.graphs]
    rows = time_backbones((1, batch), repeats) + time_worker(batch, args.res, graphs, repeats)
    base = rows[0]["ms_per_image"]
    for r in rows:
        r["x_effnet_descriptor"] = r["ms_per_image"] / base
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'what':44s} {'batch':>5s} {'ms/img':>8s} {'x effnet':>8s} {'exec':>7s} {'render':>7s} {'reward':>7s}")
    for r in rows:
        extra = "".join(f" {r[k]:7.1f}" for k in ("execute_ms", "render_ms", "reward_ms") if k in r)
        print(f"{r['what']:44s} {r['batch']:5d} {r['ms_per_image']:8.1f} {r['x_effnet_descriptor']:8.2f}{extra}")
    print("torch threads 1; exec/render/reward: ms per image within the fastest request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
