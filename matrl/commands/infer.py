"""`matrl infer PHOTO [--checkpoint CK] [--structures 5 --samples 5] [--refine SECONDS] [--res 1024] -o DIR`:
a procedural material for a photo (graph JSON, maps, render, glTF, side-by-side, summary.json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "infer", help="match a photo with a procedural material graph and export it (maps, glTF, graph JSON)",
        description="Retrieve the nearest library structures for the photo, sample parameters for each with the "
                    "policy (one greedy and the rest top-p per structure), execute, render and score all "
                    "candidates against the photo, keep the best (optionally post-optimised with --refine), and "
                    "write graph.json (re-render with `matrl render DIR/graph.json --seed SEED`), the five maps "
                    "and the render at --res, material.gltf, side_by_side.png and summary.json. See docs/infer.md.")
    parser.add_argument("photo", type=Path, help="photo file (PNG, JPEG, TIFF, WebP, BMP; any size and aspect "
                                                 "ratio: centre-cropped to a square, EXIF orientation honoured)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="policy checkpoint directory (config.json + model.safetensors); default: the "
                             "released one under models/")
    parser.add_argument("--structures", type=int, default=5, help="retrieved structures to try (default: 5)")
    parser.add_argument("--samples", type=int, default=5,
                        help="candidates per structure: 1 greedy + SAMPLES-1 top-p draws (default: 5)")
    parser.add_argument("--refine", type=float, default=0.0, metavar="SECONDS",
                        help="post-optimise the best candidate for this many seconds: gradient descent on the "
                             "differentiable parameters, then MCMC on the others (default: 0, off)")
    parser.add_argument("--res", type=int, default=1024,
                        help="resolution of the written maps and render, a power of two 64..2048 (default: 1024)")
    parser.add_argument("--match-res", type=int, default=256,
                        help="resolution at which candidates are rendered and scored (default: 256)")
    parser.add_argument("--quad", default=None, metavar="X1,Y1,...,X4,Y4",
                        help="rectify this quadrilateral of the photo (corners top-left, top-right, bottom-right, "
                             "bottom-left, in pixels of the EXIF-rotated photo) before cropping")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus of the sampled candidates (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and executor seed (default: 0)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda when present), cpu, cuda:0, ...")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from graph_executor.errors import GraphError
    from matrl.infer.photo import PhotoError, parse_quad
    from matrl.infer.pipeline import InferConfig, MaterialInference
    from policy.checkpoint import CheckpointError, released_checkpoint
    from policy.encoders import WeightsUnavailable
    from policy.retrieval import RetrievalIndexError

    try:
        config = InferConfig(structures=args.structures, samples=args.samples, refine_s=args.refine,
                             out_res=args.res, res=args.match_res, top_p=args.top_p, seed=args.seed,
                             device=args.device)
    except ValidationError as err:
        first = err.errors()[0]
        print(f"infer: --{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", file=sys.stderr)
        return 2
    try:
        quad = parse_quad(args.quad) if args.quad else None
        checkpoint = args.checkpoint if args.checkpoint is not None else released_checkpoint()
        if not args.photo.exists():  # before loading the model: a typo should fail fast
            raise PhotoError(f"{args.photo}: no such file")
        engine = MaterialInference(checkpoint, config)
        result = engine.infer(args.photo, quad=quad)
        files = engine.write(result, args.output)
    except (PhotoError, CheckpointError, RetrievalIndexError, WeightsUnavailable, GraphError, ValueError) as err:
        print(f"infer: {err}", file=sys.stderr)
        return 2
    best = result.best
    print(f"best: {best.structure_id} ({best.kind}) reward {result.best_reward:.4f}; "
          f"random floor {result.random_floor_reward:.4f}; {len(result.candidates)} candidates in "
          f"{result.timings_s['total']:.2f}s")
    if result.refine:
        print(f"refine: {result.refine['start_reward']:.4f} -> {result.refine['reward']:.4f} in "
              f"{result.refine['seconds']:.1f}s ({result.refine['gradient_steps']} gradient steps, "
              f"{result.refine['mcmc_iterations']} MCMC iterations)")
    print(f"wrote {files['summary'].parent}/ ({', '.join(sorted(p.name for p in files.values()))})")
    return 0
