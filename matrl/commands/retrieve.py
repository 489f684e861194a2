"""`matrl retrieve IMAGE [IMAGE ...] [--index INDEX] [-k 5]`: the k library structures nearest to a photo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "retrieve", help="print the k graph structures whose renders look most like an image",
        description="Embed each image with the index's encoder and print the k nearest distinct structures "
                    "by cosine similarity (a structure scores its best render). Without --index the bundled "
                    "index of the bundled library is used.")
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--index", type=Path, default=None,
                        help="index file written by `matrl index` (default: the bundled library index)")
    parser.add_argument("-k", type=int, default=5, help="number of structures to print (default: 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from policy.encoders import WeightsUnavailable
    from policy.retrieval import RetrievalIndex, RetrievalIndexError, default_index

    try:
        if args.k < 1:
            raise ValueError(f"-k must be at least 1, got {args.k}")
        images = []
        for path in args.images:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
                raise ValueError(f"cannot read image {path}: {err}") from None
        index = RetrievalIndex.load(args.index) if args.index else default_index()
        results = index.retrieve_batch(images, k=args.k)
    except (RetrievalIndexError, WeightsUnavailable, ValueError) as exc:
        print(f"retrieve: {exc}", file=sys.stderr)
        return 2
    for path, found in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": str(path), "retrieved": [{"structure_id": r.structure_id, "score": r.score}
                                                                 for r in found]}))
        else:
            print(f"{path}: " + ", ".join(f"{r.structure_id} ({r.score:.3f})" for r in found))
    return 0
