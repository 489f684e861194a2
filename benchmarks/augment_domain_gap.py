"""How far synthetic renders are from real flash photos, per augmentation: a proxy until the real-photo
reward row (which needs retrieval) can be measured.

Real: the non-blank photos of `../shared/real_photos` (21 materials x 9 flash positions, read in
place, never copied), resized to the render resolution. Synthetic: the online stream's draws
(library and random structures, `learner.online_data`), executed once and then rendered and
augmented per variant with the same random draws (`learner.augment` keeps each step's draws
independent of the others' switches), so variants differ only by the augmentation.

Both sets are encoded with the policy's frozen image encoder (EfficientNet-Lite0, pooled 1280-d
features); per variant it reports

* `probe acc.`, `probe log loss`: 5-fold cross-validated accuracy and log loss of a logistic
  regression telling real from synthetic (0.5 and 0.693: indistinguishable to a linear probe on
  the policy's own features);
* `FD`: Fréchet distance between the two feature distributions after PCA to 32 dimensions;
* `NN dist.`: mean cosine distance from each real photo to its nearest synthetic image.

Lower is closer. A variant that closes the gap is a candidate for what the policy needs to transfer;
what an augmentation buys in reward on real photos is the real-photo row (`learner.pretrain_eval
--real-photos`, once retrieval exists).

    python benchmarks/augment_domain_gap.py --samples 192 --res 256 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph_executor.degeneracy import degeneracy_reasons  # noqa: E402
from graph_executor.render import render_flash  # noqa: E402
from learner.augment import SWITCHES, AugmentConfig, augment, flash_positions  # noqa: E402
from learner.online_data import HeldOutConfig, OnlineDataConfig, OnlineSyntheticStream  # noqa: E402
from policy.encoders import EncoderConfig  # noqa: E402
from policy.tokenizer import Vocabulary  # noqa: E402
from matrl.config import parse_overrides  # noqa: E402

REAL_PHOTOS = Path(os.environ.get("MATRL_REAL_PHOTOS",
                                  Path(__file__).resolve().parent.parent.parent / "shared" / "real_photos"))


def real_photos(root: Path, res: int) -> torch.Tensor:
    """(N,3,res,res) in [0,1]: every photo that is not blank (some captures in the set are black)."""
    from PIL import Image

    images = []
    for path in sorted(root.glob("*/*.jpg")):
        image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)
        images.append(F.interpolate(image.permute(2, 0, 1)[None], size=(res, res), mode="area")[0])
    stack = torch.stack(images)
    keep = [r is None for r in degeneracy_reasons(stack)]
    return stack[torch.tensor(keep)]


def synthetic_maps(samples: int, res: int, seed: int) -> list:
    """Executed material maps of the online stream's first draws (structures x parameter sets)."""
    config = OnlineDataConfig(res=res, structures_per_chunk=8, prefetch_structures=0, held_out=HeldOutConfig())
    stream = OnlineSyntheticStream(config, Vocabulary.from_registry(), batch_size=64, seed=seed)
    out = []
    step = 0
    while sum(m.basecolor.shape[0] for m in out) < samples:
        for s in stream.structures_for(step):
            n = stream.samples_per_structure
            gen = torch.Generator().manual_seed(seed * 1000 + len(out))
            values = s.sampler.draw(n, gen)
            params = s.codec.param_tensors(s.codec.dequantise(s.codec.quantise(values)))
            out.append(s.plan.run(params, res=res, seed=torch.randint(0, 2**31 - 1, (n,), generator=gen)))
        step += 1
    stream.close()
    return out


def variant_images(maps: list, config: AugmentConfig, seed: int) -> torch.Tensor:
    images = []
    for i, m in enumerate(maps):
        n = m.basecolor.shape[0]
        light = flash_positions(n, config, torch.Generator().manual_seed(seed + 17 * i))
        images.append(augment(render_flash(m, light=light), config, torch.Generator().manual_seed(seed + 31 * i)))
    return torch.cat(images)


@torch.no_grad()
def features(encoder, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([encoder(images[i:i + batch]).pooled for i in range(0, len(images), batch)]).double()


def probe(real: torch.Tensor, synth: torch.Tensor, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """Cross-validated (accuracy, log loss) of an L2-regularised logistic regression, real vs synthetic
    (balanced classes; chance: 0.5 and 0.693). The log loss keeps grading when accuracy saturates."""
    n = min(len(real), len(synth))
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([real[torch.randperm(len(real), generator=gen)[:n]],
                   synth[torch.randperm(len(synth), generator=gen)[:n]]])
    y = torch.cat([torch.ones(n), torch.zeros(n)]).double()
    order = torch.randperm(2 * n, generator=gen)
    x, y = x[order], y[order]
    correct, log_loss = 0, 0.0
    for k in range(folds):
        test = torch.zeros(2 * n, dtype=torch.bool)
        test[k::folds] = True
        mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
        xt, xs = (x[~test] - mean) / std, (x[test] - mean) / std
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xt @ w + b, y[~test]) + 1e-2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            logits = xs @ w + b
            correct += int(((logits > 0).double() == y[test]).sum())
            log_loss += float(F.binary_cross_entropy_with_logits(logits, y[test], reduction="sum"))
    return correct / (2 * n), log_loss / (2 * n)


def frechet(real: torch.Tensor, synth: torch.Tensor, dims: int = 32) -> float:
    both = torch.cat([real, synth])
    mean = both.mean(0)
    _, _, v = torch.linalg.svd(both - mean, full_matrices=False)
    project = lambda x: (x - mean) @ v[:dims].T  # noqa: E731
    a, b = project(real), project(synth)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(ca)
    root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root @ cb @ root).clamp(min=0).sqrt().sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + ca.trace() + cb.trace() - 2 * middle)


def nearest(real: torch.Tensor, synth: torch.Tensor) -> float:
    sim = F.normalize(real, dim=1) @ F.normalize(synth, dim=1).T
    return float((1 - sim.max(1).values).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REAL_PHOTOS, help="real photos folder (material/N.jpg)")
    parser.add_argument("--samples", type=int, default=192, help="synthetic samples")
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", help="comma-separated subset of: none, all, and the switch names")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="AugmentConfig field for every variant, e.g. --set jpeg_quality=[80,98]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.photos.is_dir():
        sys.exit(f"augment_domain_gap: {args.photos} is absent (the real photos live in ../shared)")
    started = time.perf_counter()
    encoder = EncoderConfig().build()
    real = features(encoder, real_photos(args.photos, args.res))
    maps = synthetic_maps(args.samples, args.res, args.seed)
    base = AugmentConfig(**parse_overrides(args.set))
    variants = {"none": AugmentConfig.off(), **{f"only {s}": base.only(s) for s in SWITCHES}, "all": base}
    if args.variants:
        wanted = {v if v in ("none", "all") else f"only {v}" for v in args.variants.split(",")}
        unknown = wanted - set(variants)
        if unknown:
            parser.error(f"--variants: unknown {sorted(unknown)}")
        variants = {k: v for k, v in variants.items() if k in wanted}
    rows = []
    for name, config in variants.items():
        synth = features(encoder, variant_images(maps, config, args.seed))
        accuracy, log_loss = probe(real, synth)
        rows.append({"variant": name, "probe_accuracy": accuracy, "probe_log_loss": log_loss,
                     "fd": frechet(real, synth), "nn_distance": nearest(real, synth)})
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\n{len(real)} real photos, {sum(m.basecolor.shape[0] for m in maps)} synthetic samples at "
          f"{args.res}², EfficientNet-Lite0 pooled features ({time.perf_counter() - started:.0f} s)")
    print("| augmentation | probe acc. | probe log loss | FD (PCA-32) | NN dist. |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['probe_accuracy']:.3f} | {row['probe_log_loss']:.3f} | {row['fd']:.1f} | "
              f"{row['nn_distance']:.4f} |")
    if args.json:
        print(json.dumps({"rows": rows, "real": len(real), "res": args.res, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
