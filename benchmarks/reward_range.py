"""Range of the appearance reward on real data: a table of reward / Gram / Lab means per kind of pair.

Rows: identical image; the real photographs (../shared/real_photos) against the same material under
another light position and against other materials; constant images against the photos (what a
blank render scores, for choosing the failure reward); and rendered library graphs: same graph with
another seed, same graph with sampled parameters, same category, different categories.

    python benchmarks/reward_range.py [--backbone efficientnet_lite0] [--quick] [--json] [--calibrate]

--calibrate prints the per-stage mean Gram L1 between different real materials, the constants
behind the backbone's default stage scales (reward_service.backbones).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from graph_executor.executor import Plan
from graph_executor.render import render_flash
from reward_service.backbones import GRAM_TARGET_BETWEEN_MATERIALS
from reward_service.config import MetricConfig
from reward_service.metrics import AppearanceMetric, Descriptor

REPO = Path(__file__).resolve().parents[1]
REAL_PHOTOS = REPO.parent / "shared" / "real_photos"


def load_real_photos(root: Path, positions: list[int]) -> tuple[torch.Tensor, list[str], list[str]]:
    """Photos (N,3,H,W) in [0,1], their material names, and the blank (constant) files that were skipped.

    Some captures in the set are all black (e.g. leather-blue/2.jpg); they would score as perfect
    matches of a black render and of each other, so they are left out and reported.
    """
    images, labels, blank = [], [], []
    for material in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for pos in positions:
            path = root / material / f"{pos}.jpg"
            if not path.is_file():
                continue
            pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
            if int(pixels.max()) - int(pixels.min()) <= 1:
                blank.append(f"{material}/{pos}.jpg")
                continue
            images.append(pixels)
            labels.append(material)
    return torch.stack(images).float() / 255.0, labels, blank


def describe_all(metric: AppearanceMetric, images: torch.Tensor, chunk: int = 16) -> Descriptor:
    return Descriptor.cat([metric.describe(images[i:i + chunk]) for i in range(0, len(images), chunk)])


def pair_terms(metric: AppearanceMetric, desc: Descriptor, pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Reward, terms and raw per-stage Gram L1 for (pred, target) index pairs, grouped by target."""
    by_target: dict[int, list[int]] = defaultdict(list)
    for p, t in pairs:
        by_target[t].append(p)
    out: dict[str, list] = defaultdict(list)
    for t, preds in by_target.items():
        pred, target = desc.select(torch.tensor(preds)), desc.select(slice(t, t + 1))
        terms = metric.terms(pred, target)
        out["reward"].append(metric.reward(terms))
        out["gram"].append(terms["gram"])
        out["lab"].append(terms["lab"])
        out["stage_l1"].append(metric.stage_gram_l1(pred, target))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def summarise(name: str, values: dict[str, np.ndarray]) -> dict:
    r = values["reward"]
    return {"pairs": name, "n": int(len(r)), "reward_mean": float(r.mean()), "reward_std": float(r.std()),
            "reward_min": float(r.min()), "reward_max": float(r.max()),
            "gram_mean": float(values["gram"].mean()), "lab_mean": float(values["lab"].mean())}


def real_photo_rows(metric: AppearanceMetric, quick: bool) -> tuple[list[dict], np.ndarray | None]:
    if not REAL_PHOTOS.is_dir():
        print(f"note: {REAL_PHOTOS} absent, real-photo rows skipped", file=sys.stderr)
        return [], None
    positions = [0, 4, 8] if quick else list(range(9))
    images, labels, blank = load_real_photos(REAL_PHOTOS, positions)
    if blank:
        print(f"note: skipped {len(blank)} blank photos: {', '.join(blank)}", file=sys.stderr)
    desc = describe_all(metric, images)
    n = len(labels)
    same = [(i, j) for i, j in itertools.permutations(range(n), 2) if labels[i] == labels[j]]
    diff = [(i, j) for i, j in itertools.permutations(range(n), 2) if labels[i] != labels[j]]
    identical = pair_terms(metric, desc, [(i, i) for i in range(n)])
    same_v, diff_v = pair_terms(metric, desc, same), pair_terms(metric, desc, diff)
    rows = [summarise("identical image (real photos)", identical),
            summarise("real: same material, other light position", same_v),
            summarise("real: different materials", diff_v)]
    for value, label in ((0.5, "constant mid-grey image vs real photos"), (0.0, "black image vs real photos")):
        flat = metric.describe(torch.full((1, 3, 224, 224), value))
        both = Descriptor.cat([desc, flat])
        rows.append(summarise(label, pair_terms(metric, both, [(n, t) for t in range(n)])))
    return rows, diff_v["stage_l1"].mean(0)


def _graphs() -> tuple[dict[str, "object"], str]:
    from graph_executor.library import library_graphs
    graphs = library_graphs()
    if len(graphs) >= 2:
        return graphs, "library"
    from graph_executor.random_graphs import random_graph
    return {f"random_{k}": random_graph(k) for k in range(6)}, "random structures (library empty)"


def synthetic_rows(metric: AppearanceMetric, quick: bool, res: int) -> list[dict]:
    from graph_executor.sampling import sample_parameters
    graphs, source = _graphs()
    if quick:
        graphs = dict(list(graphs.items())[:6])
    n_sampled = 2 if quick else 4
    renders, owners, kinds = [], [], []
    for name, graph in graphs.items():
        plan = Plan(graph)
        sets = [{}, {}] + sample_parameters(graph, n_sampled, seed=7)
        seeds = [0, 1] + [0] * n_sampled
        renders.append(render_flash(plan.run(plan.stack(sets), res=res, seed=seeds)))
        owners += [name] * len(sets)
        kinds += ["seed0", "seed1"] + ["sampled"] * n_sampled
    desc = describe_all(metric, torch.cat(renders))
    category = {name: g.category for name, g in graphs.items()}
    base = {name: owners.index(name) for name in graphs}
    other_seed = [(base[name] + 1, base[name]) for name in graphs]
    sampled = [(i, base[owners[i]]) for i, k in enumerate(kinds) if k == "sampled"]
    same_cat, diff_cat = [], []
    for a, b in itertools.permutations(graphs, 2):
        (same_cat if category[a] == category[b] else diff_cat).append((base[a], base[b]))
    rows = [summarise(f"synthetic ({source}): same graph, other seed", pair_terms(metric, desc, other_seed)),
            summarise(f"synthetic ({source}): same graph, sampled parameters", pair_terms(metric, desc, sampled))]
    if same_cat:
        rows.append(summarise(f"synthetic ({source}): same category, other graph", pair_terms(metric, desc, same_cat)))
    if diff_cat:
        rows.append(summarise(f"synthetic ({source}): different categories", pair_terms(metric, desc, diff_cat)))
    return rows


def print_table(rows: list[dict], metric: AppearanceMetric) -> None:
    c = metric.config
    print(f"backbone {c.backbone}, stage scales {[round(float(s), 5) for s in metric.stage_scales]}, "
          f"λ_gram {c.lambda_gram}, λ_lab {c.lambda_lab}, Lab weights {c.lab_weights}")
    header = f"{'pairs':58s} {'n':>6s} {'reward':>8s} {'std':>6s} {'min':>7s} {'max':>7s} {'L_gram':>7s} {'L_lab':>7s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['pairs']:58s} {r['n']:6d} {r['reward_mean']:8.3f} {r['reward_std']:6.3f} {r['reward_min']:7.3f} "
              f"{r['reward_max']:7.3f} {r['gram_mean']:7.3f} {r['lab_mean']:7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "vgg19"])
    parser.add_argument("--weights", default=None, help="backbone checkpoint path")
    parser.add_argument("--res", type=int, default=256, help="executor resolution of the synthetic renders")
    parser.add_argument("--quick", action="store_true", help="3 light positions, at most 6 graphs")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--calibrate", action="store_true", help="print the per-stage between-material Gram L1")
    parser.add_argument("--no-synthetic", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    metric = AppearanceMetric(MetricConfig(backbone=args.backbone, weights=args.weights))
    start = time.perf_counter()
    rows, between = real_photo_rows(metric, args.quick)
    if not args.no_synthetic:
        rows += synthetic_rows(metric, args.quick, args.res)
    if args.json:
        print(json.dumps({"backbone": args.backbone, "rows": rows,
                          "between_material_stage_gram_l1": None if between is None else between.tolist()}, indent=1))
    else:
        print_table(rows, metric)
        print(f"({time.perf_counter() - start:.1f} s, torch threads 1)")
    if args.calibrate and between is not None:
        print("between-material mean Gram L1 per stage:", [round(float(v), 4) for v in between])
        print("=> stage scales", [round(GRAM_TARGET_BETWEEN_MATERIALS / float(v), 6) for v in between])
    return 0


if __name__ == "__main__":
    sys.exit(main())
