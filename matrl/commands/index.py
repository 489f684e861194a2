"""`matrl index --graphs library --per-graph 8 --res 256 -o INDEX`: build a retrieval index of graph renders."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from graph_executor.errors import GraphError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "index", help="render every graph and embed the renders into a retrieval index (Arrow IPC)",
        description="Render --per-graph random parameter draws of every graph (degenerate renders are "
                    "skipped and replaced), embed them with the frozen image encoder and write an Arrow IPC "
                    "index that `matrl retrieve` and the real-photo targets search by cosine similarity. "
                    "The bundled index is rebuilt with: "
                    "matrl index --graphs library --per-graph 8 --res 256 --seed 0 --dtype float16 "
                    "-o policy/data/library_index.arrow")
    parser.add_argument("--graphs", default="library",
                        help="'library' (bundled graphs), a directory of graph JSON files, or a comma list "
                             "of library names / JSON paths (default: library)")
    parser.add_argument("--per-graph", type=int, default=8, help="renders per graph (default: 8)")
    parser.add_argument("--res", type=int, default=256, help="render resolution, a power of two 64..2048 "
                                                             "(default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parameter draws (default: 0)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="index file to write (.arrow)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="storage type of the embeddings (float16 halves the file; default: float32)")
    parser.add_argument("--encoder", choices=("efficientnet_lite0", "open_clip"), default="efficientnet_lite0",
                        help="image encoder whose pooled embedding is indexed (default: efficientnet_lite0, "
                             "offline weights)")
    parser.add_argument("--open-clip-model", default=None,
                        help="open_clip model name for --encoder open_clip, e.g. ViT-B-32")
    parser.add_argument("--pretrained", default=None,
                        help="open_clip pretrained tag or local checkpoint file; for efficientnet_lite0 an "
                             "optional weights file (default: the packaged ImageNet weights)")
    parser.add_argument("--batch-size", type=int, default=32, help="images rendered / encoded together")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this host")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device {name!r}: use cpu, cuda, cuda:N or auto")
    return name


def run(args: argparse.Namespace) -> int:
    from learner.datagen import collect_graphs
    from learner.dataset import DatasetError
    from policy.encoders import EncoderConfig, WeightsUnavailable
    from policy.retrieval import RetrievalIndex, RetrievalIndexError

    started = time.perf_counter()
    try:
        if args.encoder == "open_clip" and not args.open_clip_model:
            raise ValueError("--encoder open_clip needs --open-clip-model (e.g. ViT-B-32)")
        if args.encoder != "open_clip" and args.open_clip_model:
            raise ValueError("--open-clip-model only applies to --encoder open_clip")
        if args.out.is_dir():
            raise ValueError(f"-o {args.out} is a directory; give the index file to write")
        encoder = EncoderConfig(name=args.encoder, open_clip_model=args.open_clip_model, pretrained=args.pretrained)
        graphs = {gid: graph for gid, (graph, _) in collect_graphs(args.graphs).items()}
        index = RetrievalIndex.build(graphs, encoder, per_graph=args.per_graph, res=args.res, seed=args.seed,
                                     batch_size=args.batch_size, device=resolve_device(args.device),
                                     progress=not args.quiet)
        index.save(args.out, dtype=args.dtype)
    except (DatasetError, GraphError, RetrievalIndexError, WeightsUnavailable, ValueError, OSError) as exc:
        print(f"index: {exc}", file=sys.stderr)
        return 2
    meta = index.meta
    rejected = sum(sum(r.values()) for r in meta["rejected"].values())
    print(f"{len(index.structures())} structures, {len(index)} renders ({rejected} degenerate draws skipped) "
          f"-> {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - started:.1f} s)")
    if meta["missing"]:
        print(f"warning: no informative render of {', '.join(meta['missing'])}: they cannot be retrieved",
              file=sys.stderr)
    return 0
