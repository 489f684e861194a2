"""Quality of a pre-trained policy on held-out structures: token accuracy and appearance reward.

For every sample of a split (test by default: structures never seen in training) it measures
  * teacher-forced cross-entropy and token accuracy (what pre-training optimises),
  * the greedy prediction's exact-token rate (free-running, as the policy is used),
and scores with the appearance reward (`reward_service.worker.RewardWorker`) against the target
image, each rendered with a seed other than the target's (seeds are not predicted):
  * greedy    - the policy's greedy tokens,
  * prior     - a random draw of the structure's parameters from the dataset's sampling
                distribution (`graph_executor.sampling`): the floor a parameter guess must beat,
  * uniform   - uniformly random valid tokens: a weaker floor,
  * truth     - the ground-truth parameters: the ceiling left by the seed change alone.

Run: `python -m learner.pretrain_eval --checkpoint RUN/checkpoints/epoch_0010 --data DIR --json out.json`.

On real flash photos (`--real-photos ../shared/real_photos --retrieval module:function`), where no
ground truth exists, each photo gets k structures from a retrieval function and each condition
(greedy, the structures' authored values, a prior draw) keeps its best reward over them: the
real-photo row, by which training variants (e.g. each photo-like augmentation switched off) are
compared.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from graph_executor.ir import Graph
from graph_executor.sampling import sample_parameters
from policy.checkpoint import load_policy
from learner.dataset import SyntheticDataset, decode_png, load_graphs, load_manifest
from learner.stats import Stat
from policy.encoders import EncoderConfig
from policy.batching import collate
from policy.sampler import Sampler, SamplingConfig
from policy.tokenizer import GraphTokenizer, Vocabulary
from reward_service.config import RewardConfig
from reward_service.worker import RewardWorker, ScoreRequest

CONDITIONS = ("greedy", "prior", "uniform", "truth")


@dataclass
class QualityReport:
    checkpoint: str
    split: str
    samples: int
    structures: int
    graphs: int
    teacher_forced_loss: float
    teacher_forced_token_accuracy: float
    greedy_token_accuracy: float
    reward: dict[str, Stat] = field(default_factory=dict)
    reward_by_graph: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "test",
                        max_per_graph: int | None = None, reward_config: RewardConfig | None = None,
                        batch_size: int = 32, seed: int = 0, scorer=None) -> QualityReport:
    """`scorer` is anything with `score(ScoreRequest) -> list[ScoreResult]`: an in-process
    RewardWorker (the default) or a `RewardClient` of the reward service."""
    start = time.perf_counter()
    policy, info = load_policy(checkpoint)
    policy.eval()
    encoder = EncoderConfig.model_validate({**info.encoder, "cache_tokens": False}).build()
    vocab = Vocabulary.from_dict(info.policy.vocab)
    graphs = load_graphs(data)
    manifest = load_manifest(data)
    dataset = SyntheticDataset(data, split)
    taken: dict[str, int] = defaultdict(int)
    indices = []
    for i, gid in enumerate(dataset.graph_ids):
        if max_per_graph is None or taken[gid] < max_per_graph:
            taken[gid] += 1
            indices.append(i)
    if not indices:
        raise ValueError(f"{data}: split {split!r} holds no samples")
    by_graph: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_graph[dataset.graph_ids[i]].append(i)

    worker = scorer or RewardWorker(reward_config or RewardConfig(res=manifest.res))
    sampler = Sampler(policy, SamplingConfig(greedy=True, cuda_graphs=False))
    rng = np.random.default_rng(seed)
    loss_sum = correct = greedy_correct = count = 0.0
    rewards: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    per_graph: dict[str, dict[str, list[float]]] = defaultdict(lambda: {c: [] for c in CONDITIONS})
    failures: dict[str, int] = defaultdict(int)

    for gid, rows in sorted(by_graph.items()):
        graph = graphs[gid]
        tokenizer = GraphTokenizer(graph, vocab)
        structure_json = graph.to_json(indent=None)
        prior = sample_parameters(graph, len(rows), seed=10_000 + seed)
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            items = [dataset[i] for i in chunk]
            truth = [it["tokens"].tolist() for it in items]
            batch = collate([tokenizer.structure()] * len(items), truth)
            with torch.no_grad():
                image_tokens = encoder(torch.stack([it["image"] for it in items])).tokens
                logits = policy(batch, image_tokens)[batch.slot_mask].float()
                targets = batch.tokens[batch.slot_mask]
                greedy = sampler.sample(batch, image_tokens, seed=seed).tokens
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(-1) == targets).sum().item()
            greedy_correct += (greedy[batch.slot_mask] == targets).sum().item()
            count += targets.numel()
            uniform = torch.multinomial(batch.token_masks[0].float(), len(items), replacement=True,
                                        generator=torch.Generator().manual_seed(int(rng.integers(1 << 31)))).T
            candidates = {"greedy": tokenizer.detokenize_batch(greedy[:, :len(tokenizer)]),
                          "prior": prior[lo:lo + len(chunk)],
                          "uniform": tokenizer.detokenize_batch(uniform),
                          "truth": [json.loads(it["params"]) for it in items]}
            for k, item in enumerate(items):
                target = decode_png(dataset.table.column("image")[chunk[k]].as_py())
                render_seed = (item["seed"] + 1) & 0x7FFFFFFF
                results = worker.score(ScoreRequest(
                    structure=structure_json, seeds=[render_seed] * len(CONDITIONS), target=target,
                    param_sets=[candidates[c][k] for c in CONDITIONS]))
                for condition, result in zip(CONDITIONS, results):
                    if not result.ok:
                        failures[condition] += 1
                        continue
                    rewards[condition].append(result.reward)
                    per_graph[gid][condition].append(result.reward)

    return QualityReport(
        checkpoint=str(checkpoint), split=split, samples=len(indices),
        structures=len({manifest.graphs[g].structure_hash for g in by_graph}), graphs=len(by_graph),
        teacher_forced_loss=loss_sum / count, teacher_forced_token_accuracy=correct / count,
        greedy_token_accuracy=greedy_correct / count,
        reward={c: Stat.of(v) for c, v in rewards.items()},
        reward_by_graph={g: {c: float(np.mean(v)) if v else math.nan for c, v in r.items()}
                         for g, r in sorted(per_graph.items())},
        failures=dict(failures), seconds=time.perf_counter() - start)


# ---- real photos (the real-photo row: needs structures retrieved for each photo) --------------------

REAL_CONDITIONS = ("greedy", "authored", "prior")
Retrieval = Callable[[np.ndarray, int], Sequence[Graph]]


@dataclass
class RealPhotoReport:
    """Best reward over the k retrieved structures per photo, mean over photos, per condition:
    greedy (the policy's parameters for each structure), authored (each structure's own values:
    retrieval alone) and prior (a random draw around them)."""

    checkpoint: str
    photos: int
    k: int
    reward: dict[str, Stat] = field(default_factory=dict)
    by_material: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def load_retrieval(spec: str) -> Retrieval:
    """`module:function` -> the function; it is called as `function(photo HxWx3 uint8, k)` and
    returns up to k graph structures, most similar first (k-NN over library renders, paper §5)."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--retrieval {spec!r} must read module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--retrieval {spec!r}: {err}") from None


def real_photo_paths(root: str | Path) -> list[Path]:
    """Photos `material/N.jpg` under `root` (`../shared/real_photos`), sorted."""
    paths = sorted(p for p in Path(root).glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise ValueError(f"{root}: no material/N.jpg photos")
    return paths


def evaluate_real_photos(checkpoint: str | Path, photos: str | Path, retrieve: Retrieval, k: int = 5,
                         res: int = 256, max_photos: int | None = None, reward_config: RewardConfig | None = None,
                         seed: int = 0, scorer=None) -> RealPhotoReport:
    """Score the policy on real flash photos: for every photo (blank captures skipped) and each of
    its k retrieved structures, the greedy parameters, the authored values and a prior draw are
    rendered and scored against the photo; each condition keeps its best structure per photo.
    Training variants (e.g. `data.augment.<switch>: false`) are compared by their greedy row."""
    from PIL import Image

    from graph_executor.degeneracy import degeneracy_reasons

    start = time.perf_counter()
    policy, info = load_policy(checkpoint)
    policy.eval()
    encoder = EncoderConfig.model_validate({**info.encoder, "cache_tokens": False}).build()
    vocab = Vocabulary.from_dict(info.policy.vocab)
    worker = scorer or RewardWorker(reward_config or RewardConfig(res=res))
    sampler = Sampler(policy, SamplingConfig(greedy=True, cuda_graphs=False))
    best: dict[str, list[float]] = {c: [] for c in REAL_CONDITIONS}
    per_material: dict[str, dict[str, list[float]]] = defaultdict(lambda: {c: [] for c in REAL_CONDITIONS})
    failures: dict[str, int] = defaultdict(int)
    scored = 0
    for path in real_photo_paths(photos):
        if max_photos is not None and scored >= max_photos:
            break
        photo = np.asarray(Image.open(path).convert("RGB").resize((res, res), Image.Resampling.BOX))
        image = torch.from_numpy(photo.copy()).permute(2, 0, 1).float()[None] / 255
        if degeneracy_reasons(image)[0] is not None:
            continue  # some captures of the set are black
        scored += 1
        structures = list(retrieve(photo, k))[:k]
        if not structures:
            raise ValueError(f"retrieval returned no structure for {path}")
        with torch.no_grad():
            image_tokens = encoder(image).tokens
        photo_best = {c: -math.inf for c in REAL_CONDITIONS}
        for graph in structures:
            tokenizer = GraphTokenizer(graph, vocab)
            batch = collate([tokenizer.structure()])
            with torch.no_grad():
                greedy = sampler.sample(batch, image_tokens, seed=seed).tokens
            candidates = {"greedy": tokenizer.detokenize_batch(greedy[:, :len(tokenizer)])[0], "authored": {},
                          "prior": sample_parameters(graph, 1, seed=seed)[0]}
            results = worker.score(ScoreRequest(structure=graph.to_json(indent=None), seeds=[seed] * 3, target=photo,
                                                param_sets=[candidates[c] for c in REAL_CONDITIONS]))
            for condition, result in zip(REAL_CONDITIONS, results):
                if result.ok:
                    photo_best[condition] = max(photo_best[condition], result.reward)
                else:
                    failures[condition] += 1
        for condition, value in photo_best.items():
            if value > -math.inf:
                best[condition].append(value)
                per_material[path.parent.name][condition].append(value)
    if scored == 0:
        raise ValueError(f"{photos}: every photo is blank")
    return RealPhotoReport(
        checkpoint=str(checkpoint), photos=scored, k=k, reward={c: Stat.of(v) for c, v in best.items()},
        by_material={m: {c: float(np.mean(v)) if v else math.nan for c, v in r.items()}
                     for m, r in sorted(per_material.items())},
        failures=dict(failures), seconds=time.perf_counter() - start)


def format_real_report(report: RealPhotoReport) -> str:
    lines = [f"{report.photos} real photos, best of {report.k} retrieved structures each",
             "", "| parameters | mean best reward | ± s.e. | n |", "| --- | --- | --- | --- |"]
    for condition in REAL_CONDITIONS:
        s = report.reward[condition]
        lines.append(f"| {condition} | {s.mean:.4f} | {s.stderr:.4f} | {s.n} |")
    if report.failures:
        lines.append(f"\nfailed samples: {report.failures}")
    return "\n".join(lines)


def format_report(report: QualityReport) -> str:
    seen = "seen in training" if report.split == "train" else "never seen in training"
    lines = [f"{report.split} split: {report.samples} samples of {report.graphs} graphs "
             f"({report.structures} structures {seen})",
             f"teacher-forced loss per token {report.teacher_forced_loss:.3f}, token accuracy "
             f"{report.teacher_forced_token_accuracy:.3f}; greedy exact-token rate {report.greedy_token_accuracy:.3f}",
             "", "| parameters | mean reward | ± s.e. | n |", "| --- | --- | --- | --- |"]
    for condition in CONDITIONS:
        s = report.reward[condition]
        lines.append(f"| {condition} | {s.mean:.4f} | {s.stderr:.4f} | {s.n} |")
    lines += ["", "| graph | " + " | ".join(CONDITIONS) + " |", "| --- |" + " --- |" * len(CONDITIONS)]
    for gid, values in report.reward_by_graph.items():
        lines.append(f"| {gid} | " + " | ".join(f"{values[c]:.4f}" for c in CONDITIONS) + " |")
    if report.failures:
        lines.append(f"\nfailed samples: {report.failures}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="policy checkpoint directory")
    parser.add_argument("--data", type=Path, help="synthetic dataset: score its --split")
    parser.add_argument("--split", default="test", help="split of --data (default test)")
    parser.add_argument("--max-per-graph", type=int, help="samples per graph of --data")
    parser.add_argument("--real-photos", type=Path, help="score real photos (material/N.jpg) instead of --data, "
                        "e.g. ../shared/real_photos; needs --retrieval")
    parser.add_argument("--retrieval", help="module:function giving each photo's k structures (real photos)")
    parser.add_argument("--k", type=int, default=5, help="structures retrieved per photo (paper: 5)")
    parser.add_argument("--res", type=int, default=256, help="render resolution for real photos")
    parser.add_argument("--max-photos", type=int, help="score at most this many photos")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if (args.data is None) == (args.real_photos is None):
        parser.error("give exactly one of --data and --real-photos")
    if args.real_photos is not None:
        if not args.retrieval:
            parser.error("--real-photos needs --retrieval module:function (k-NN over library renders)")
        try:
            report = evaluate_real_photos(args.checkpoint, args.real_photos, load_retrieval(args.retrieval),
                                          args.k, args.res, args.max_photos)
        except ValueError as err:
            print(f"pretrain_eval: {err}", file=sys.stderr)
            return 2
        print(format_real_report(report))
    else:
        report = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.max_per_graph)
        print(format_report(report))
    print(f"\n({report.seconds:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
