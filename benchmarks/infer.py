"""Latency of `matrl infer` with the model loaded: per-photo seconds by phase.

Loads the policy, encoder, retrieval index and reward worker once (`MaterialInference`), runs one
warm-up photo, then every photo `--repeats` times and prints the median seconds per phase:
load/crop, encode, retrieve, sample, prepare (parameter validation), execute, render, reward (the
25 candidates), floor (the random-floor draws), refine (when --refine), candidates total (what the
issue's latency target is about: everything up to the ranked candidates), total, and write (maps at
--out-res, glTF, side-by-side, summary; timed separately).

Without --checkpoint a full-size policy (the paper's sizes, `PolicyConfig` defaults) is randomly
initialised: its latency is a trained one's, its rewards are not. Photos: --photos files, else
renders of --graphs library graphs at 256².

    python benchmarks/infer.py                                   # CPU, 5 structures x 5 samples at 256²
    python benchmarks/infer.py --device cuda --repeats 10        # the H200 figure
    python benchmarks/infer.py --photos ../shared/real_photos/*/01*.png --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHASES = ("load", "encode", "retrieve", "sample", "prepare", "execute", "render", "reward", "floor", "refine")


def _library_photos(names: list[str], out: Path) -> list[Path]:
    from graph_executor.executor import Plan
    from graph_executor.library import load_library_graph
    from graph_executor.render import render_flash

    paths = []
    for name in names:
        plan = Plan(load_library_graph(name))
        with torch.no_grad():
            image = render_flash(plan.run(plan.stack(), res=256, seed=7))[0]
        path = out / f"{name}.png"
        Image.fromarray((image.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def _random_checkpoint(out: Path) -> Path:
    from policy.checkpoint import save_checkpoint
    from policy.encoders import EncoderConfig
    from policy.model import MaterialPolicy, PolicyConfig
    from policy.tokenizer import Vocabulary

    torch.manual_seed(0)
    config = PolicyConfig(vocab=Vocabulary.from_registry().to_dict())  # EfficientNet-Lite0 token shape (defaults)
    return save_checkpoint(out / "random_full_size", MaterialPolicy(config), encoder=EncoderConfig().model_dump())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="policy checkpoint (default: a randomly "
                                                                      "initialised full-size policy)")
    parser.add_argument("--photos", type=Path, nargs="*", default=None, help="photo files (default: library renders)")
    parser.add_argument("--graphs", default="red_bricks,green_marble,oak_planks,brushed_steel",
                        help="library graphs rendered as photos when --photos is not given")
    parser.add_argument("--structures", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--res", type=int, default=256, help="match resolution (candidates, reward)")
    parser.add_argument("--out-res", type=int, default=1024, help="resolution of the written maps")
    parser.add_argument("--refine", type=float, default=0.0, help="refinement budget in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per photo")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON last")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from matrl.infer.pipeline import InferConfig, MaterialInference

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = args.photos or _library_photos(args.graphs.split(","), tmp)
        checkpoint = args.checkpoint or _random_checkpoint(tmp)
        config = InferConfig(structures=args.structures, samples=args.samples, res=args.res, out_res=args.out_res,
                             refine_s=args.refine, device=args.device)
        t0 = time.perf_counter()
        engine = MaterialInference(checkpoint, config)
        load_s = time.perf_counter() - t0
        engine.infer(photos[0])  # warm-up: first-call allocations, CUDA graph capture
        runs, rewards = [], []
        for photo in photos:
            for _ in range(args.repeats):
                result = engine.infer(photo)
                engine.write(result, tmp / "out")
                runs.append(result.timings_s)
                rewards.append((result.best_reward, result.random_floor_reward))
    med = {p: statistics.median(r.get(p, 0.0) for r in runs) for p in (*PHASES, "total", "write")}
    med["candidates"] = statistics.median(sum(r.get(p, 0.0) for p in PHASES[:8]) for r in runs)
    device = str(engine.device)
    if engine.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(engine.device)})"
    n = args.structures * args.samples
    print(f"model load {load_s:.2f} s on {device}, torch threads {torch.get_num_threads()}; {len(photos)} photos x "
          f"{args.repeats} runs; {n} candidates at {args.res}²; maps written at {args.out_res}²; median seconds")
    cols = [p for p in (*PHASES, "candidates", "total", "write") if p != "refine" or args.refine > 0]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---:|" * len(cols))
    print("| " + " | ".join(f"{med[c]:.3f}" for c in cols) + " |")
    best, floor = np.mean([r[0] for r in rewards]), np.mean([r[1] for r in rewards])
    print(f"mean best reward {best:.3f}, mean random floor {floor:.3f} (policy: "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random full-size'})")
    if args.json:
        print(json.dumps({"device": device, "load_s": load_s, "candidates": n, "res": args.res,
                          "median_s": med, "best_reward": best, "random_floor_reward": floor}))


if __name__ == "__main__":
    main()
