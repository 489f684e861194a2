"""Quality of a pre-trained policy on held-out structures: token accuracy and appearance reward.

For every sample of a split (test by default: structures never seen in training) it measures
  * teacher-forced cross-entropy and token accuracy (what pre-training optimises),
  * the greedy prediction's exact-token rate (free-running, as the policy is used),
and scores with the appearance reward (`reward_service.worker.RewardWorker`) against the target
image, each rendered with a seed other than the target's (seeds are not predicted):
  * greedy    - the policy's greedy tokens,
  * top1_of_5 - the best reward of the greedy tokens and 4 top-p 0.9 draws (the paper's "5 samples,
                top-1", as `matrl eval` at budget 1 x 5),
  * prior     - a random draw of the structure's parameters from the dataset's sampling
                distribution (`graph_executor.sampling`): the floor a parameter guess must beat,
  * uniform   - uniformly random valid tokens: a weaker floor,
  * truth     - the ground-truth parameters: the ceiling left by the seed change alone.
Each condition also gets the LPIPS-style distance of its render to the target
(`AppearanceMetric.lpips_style`, lower is better; the top1_of_5's is its chosen candidate's). The
report keeps one row per target (`TargetRow`: reward and distance per condition) and the paired
differences greedy − prior, greedy − uniform and top1_of_5 − prior over the targets where both
conditions scored (mean and 95 % t-interval, `learner.stats.Stat.paired`): the issue's check
"greedy beats the prior on held-out structures" is `paired["greedy_minus_prior"]`'s interval > 0.

Run: `python -m learner.pretrain_eval --checkpoint RUN/checkpoints/epoch_0010 --data DIR --json out.json`.

On real flash photos (`--real-photos ../shared/real_photos`; `--retrieval module:function`, default
`policy.retrieval:library_structures`), where no
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
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from graph_executor.executor import Plan
from graph_executor.ir import Graph
from graph_executor.render import render_flash
from graph_executor.sampling import sample_parameters
from policy.checkpoint import load_policy
from learner.dataset import SyntheticDataset, decode_png, load_graphs, load_manifest
from learner.stats import Stat
from policy.encoders import EncoderConfig
from policy.batching import collate
from policy.sampler import Sampler, SamplingConfig
from policy.tokenizer import GraphTokenizer, Vocabulary
from reward_service.config import RewardConfig
from reward_service.metrics import AppearanceMetric
from reward_service.worker import RewardWorker, ScoreRequest

SCORED = ("greedy", "prior", "uniform", "truth")  # one parameter set each, in this order per request
CONDITIONS = ("greedy", "top1_of_5", "prior", "uniform", "truth")
TOP_P = 0.9          # the paper's nucleus for sampled candidates (as `matrl infer` / `matrl eval`)
TOP_P_DRAWS = 4      # top1_of_5 = best of the greedy tokens and these draws
PAIRS = (("greedy", "prior"), ("greedy", "uniform"), ("top1_of_5", "prior"))


def pair_key(a: str, b: str) -> str:
    return f"{a}_minus_{b}"


@dataclass
class TargetRow:
    """One target of the split: reward and LPIPS-style distance per condition (None: the render failed,
    or the distance was not measured)."""

    index: int            # row of the split (dataset[index])
    graph: str
    reward: dict[str, float | None]
    lpips: dict[str, float | None]


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
    lpips: dict[str, Stat] = field(default_factory=dict)           # n = 0 when not measured
    paired: dict[str, Stat] = field(default_factory=dict)          # reward a − b, e.g. greedy_minus_prior
    paired_lpips: dict[str, Stat] = field(default_factory=dict)    # distance a − b (negative: a is closer)
    reward_by_graph: dict[str, dict[str, float]] = field(default_factory=dict)
    targets: list[TargetRow] = field(default_factory=list)
    lpips_name: str = ""
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def paired_stats(rows: Sequence[TargetRow], measure: str) -> dict[str, Stat]:
    """`PAIRS`' differences a − b of `measure` ("reward" or "lpips") over the rows where both a and b
    have a value: the same targets scored twice, so the interval is that of the per-target differences."""
    out = {}
    for a, b in PAIRS:
        both = [(getattr(r, measure)[a], getattr(r, measure)[b]) for r in rows]
        both = [(x, y) for x, y in both if x is not None and y is not None]
        out[pair_key(a, b)] = Stat.paired([x for x, _ in both], [y for _, y in both])
    return out


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "test",
                        max_per_graph: int | None = None, reward_config: RewardConfig | None = None,
                        batch_size: int = 32, seed: int = 0, scorer=None, lpips: bool = True) -> QualityReport:
    """`scorer` is anything with `score(ScoreRequest) -> list[ScoreResult]`: an in-process
    RewardWorker (the default) or a `RewardClient` of the reward service. `lpips=False` skips the
    LPIPS-style distance, which costs one more render and backbone pass per condition and target
    (the reward service returns rewards, not images, so the chosen candidates are rendered again here,
    with the same parameters, seed and resolution as the scored render)."""
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

    reward_config = reward_config or RewardConfig(res=manifest.res)
    worker = scorer or RewardWorker(reward_config)
    # the distance: the in-process worker's metric (same backbone and device), else one built from the config
    metric = (getattr(worker, "metric", None) or AppearanceMetric(reward_config.metric)) if lpips else None
    metric_device = getattr(worker, "device", torch.device("cpu"))
    sampler = Sampler(policy, SamplingConfig(greedy=True, cuda_graphs=False))
    top_p = Sampler(policy, SamplingConfig(top_p=TOP_P, cuda_graphs=False))
    rng = np.random.default_rng(seed)
    draw_seeds = np.random.default_rng([seed, 1])  # apart from `rng`, so the other conditions keep their draws
    loss_sum = correct = greedy_correct = count = 0.0
    rows: list[TargetRow] = []
    failures: dict[str, int] = defaultdict(int)

    for gid, split_rows in sorted(by_graph.items()):
        graph = graphs[gid]
        plan = Plan(graph) if metric is not None else None
        tokenizer = GraphTokenizer(graph, vocab)
        structure_json = graph.to_json(indent=None)
        prior = sample_parameters(graph, len(split_rows), seed=10_000 + seed)
        for lo in range(0, len(split_rows), batch_size):
            chunk = split_rows[lo:lo + batch_size]
            items = [dataset[i] for i in chunk]
            truth = [it["tokens"].tolist() for it in items]
            batch = collate([tokenizer.structure()] * len(items), truth)
            with torch.no_grad():
                image_tokens = encoder(torch.stack([it["image"] for it in items])).tokens
                logits = policy(batch, image_tokens)[batch.slot_mask].float()
                targets = batch.tokens[batch.slot_mask]
                greedy = sampler.sample(batch, image_tokens, seed=seed).tokens
                drawn = top_p.sample(batch, image_tokens, seed=int(draw_seeds.integers(1 << 31)),
                                     samples_per_graph=TOP_P_DRAWS).tokens
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
            draws = tokenizer.detokenize_batch(drawn[:, :len(tokenizer)])  # rows k*TOP_P_DRAWS + j
            for k, item in enumerate(items):
                target = decode_png(dataset.table.column("image")[chunk[k]].as_py())
                render_seed = (item["seed"] + 1) & 0x7FFFFFFF
                results = worker.score(ScoreRequest(
                    structure=structure_json, seeds=[render_seed] * len(SCORED), target=target,
                    param_sets=[candidates[c][k] for c in SCORED]))
                # the draws in a request of their own: the four conditions' request is as before 2026-11-30
                own = draws[k * TOP_P_DRAWS:(k + 1) * TOP_P_DRAWS]
                sampled = worker.score(ScoreRequest(structure=structure_json, seeds=[render_seed] * len(own),
                                                    target=target, param_sets=own))
                reward: dict[str, float | None] = {}
                chosen: dict[str, dict] = {}
                for condition, result in zip(SCORED, results):
                    reward[condition] = result.reward if result.ok else None
                    if result.ok:
                        chosen[condition] = candidates[condition][k]
                    else:
                        failures[condition] += 1
                failures["top_p_draws"] += sum(not r.ok for r in sampled)
                pool = [(r.reward, p) for r, p in zip([results[0], *sampled], [candidates["greedy"][k], *own]) if r.ok]
                if pool:
                    reward["top1_of_5"], chosen["top1_of_5"] = max(pool, key=lambda rp: rp[0])
                else:
                    reward["top1_of_5"] = None
                    failures["top1_of_5"] += 1
                distance = {c: None for c in CONDITIONS}
                if metric is not None and chosen:
                    names = [c for c in CONDITIONS if c in chosen]
                    distance.update(zip(names, _lpips(metric, metric_device, plan, [chosen[c] for c in names],
                                                      render_seed, _scorer_res(worker, manifest.res), target)))
                rows.append(TargetRow(chunk[k], gid, {c: reward[c] for c in CONDITIONS}, distance))

    def values(measure: str, condition: str, graph: str | None = None) -> list[float]:
        return [v for r in rows if graph in (None, r.graph) and (v := getattr(r, measure)[condition]) is not None]

    return QualityReport(
        checkpoint=str(checkpoint), split=split, samples=len(indices),
        structures=len({manifest.graphs[g].structure_hash for g in by_graph}), graphs=len(by_graph),
        teacher_forced_loss=loss_sum / count, teacher_forced_token_accuracy=correct / count,
        greedy_token_accuracy=greedy_correct / count,
        reward={c: Stat.of(values("reward", c)) for c in CONDITIONS},
        lpips={c: Stat.of(values("lpips", c)) for c in CONDITIONS},
        paired=paired_stats(rows, "reward"), paired_lpips=paired_stats(rows, "lpips"),
        reward_by_graph={g: {c: Stat.of(values("reward", c, g)).mean for c in CONDITIONS} for g in sorted(by_graph)},
        targets=rows, lpips_name=metric.lpips_name if metric is not None else "",
        failures={k: v for k, v in failures.items() if v}, seconds=time.perf_counter() - start)


def _scorer_res(worker, default: int) -> int:
    """The resolution the scorer renders at (an in-process worker's config; the dataset's otherwise)."""
    config = getattr(worker, "config", None)
    return getattr(config, "res", default)


def _lpips(metric: AppearanceMetric, device: torch.device, plan: Plan, param_sets: list[dict], seed: int,
           res: int, target: np.ndarray) -> list[float]:
    """LPIPS-style distance of each parameter set's render (the scorer's: same seed and resolution) to the target."""
    with torch.no_grad():
        params = plan.stack(param_sets, device=device)
        images = render_flash(plan.run(params, res=res, seed=[seed] * len(param_sets), device=device))
        pixels = torch.from_numpy(target.astype(np.float32) / 255).permute(2, 0, 1)[None].to(device)
        return metric.evaluate(images, pixels)[metric.lpips_name].tolist()


def to_json(report: Any) -> Any:
    """A report as JSON-ready values: every `Stat` with its 95 % interval (`Stat.as_dict`), non-finite
    numbers as None (strict JSON has no NaN)."""
    if isinstance(report, Stat):
        return to_json(report.as_dict())
    if is_dataclass(report):
        return {f.name: to_json(getattr(report, f.name)) for f in fields(report)}
    if isinstance(report, dict):
        return {k: to_json(v) for k, v in report.items()}
    if isinstance(report, (list, tuple)):
        return [to_json(v) for v in report]
    if isinstance(report, float) and not math.isfinite(report):
        return None
    return report


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


def format_report(report: QualityReport, per_target: bool = False) -> str:
    """Markdown: per condition the mean reward and LPIPS-style distance with their 95 % t-intervals, the
    paired differences, the mean reward per graph and (`per_target`) every target's row."""
    seen = "seen in training" if report.split == "train" else "never seen in training"
    lines = [f"{report.split} split: {report.samples} samples of {report.graphs} graphs "
             f"({report.structures} structures {seen})",
             f"teacher-forced loss per token {report.teacher_forced_loss:.3f}, token accuracy "
             f"{report.teacher_forced_token_accuracy:.3f}; greedy exact-token rate {report.greedy_token_accuracy:.3f}",
             "", f"| parameters | reward [95% CI] | ± s.e. | LPIPS-style {report.lpips_name or '(not measured)'} "
             "[95% CI] | n |", "| --- | --- | --- | --- | --- |"]
    for condition in CONDITIONS:
        s = report.reward[condition]
        lines.append(f"| {condition} | {s.format(4)} | {s.stderr:.4f} | {report.lpips[condition].format(4)} | {s.n} |")
    lines += ["", "| paired difference (same targets) | reward [95% CI] | LPIPS-style [95% CI] | n |",
              "| --- | --- | --- | --- |"]
    for a, b in PAIRS:
        key = pair_key(a, b)
        d = report.paired[key]
        lines.append(f"| {a} − {b} | {d.format(4)} | {report.paired_lpips[key].format(4)} | {d.n} |")
    lines += ["", "| graph | " + " | ".join(CONDITIONS) + " |", "| --- |" + " --- |" * len(CONDITIONS)]
    for gid, values in report.reward_by_graph.items():
        lines.append(f"| {gid} | " + " | ".join(f"{values[c]:.4f}" for c in CONDITIONS) + " |")
    if per_target:
        def cell(v: float | None) -> str:
            return "–" if v is None else f"{v:.4f}"
        lines += ["", "| row | graph | " + " | ".join(f"{c} reward | {c} LPIPS" for c in CONDITIONS) + " |",
                  "| --- | --- |" + " --- | --- |" * len(CONDITIONS)]
        for row in report.targets:
            lines.append(f"| {row.index} | {row.graph} | "
                         + " | ".join(f"{cell(row.reward[c])} | {cell(row.lpips[c])}" for c in CONDITIONS) + " |")
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
                        "e.g. ../shared/real_photos")
    parser.add_argument("--retrieval", default="policy.retrieval:library_structures",
                        help="module:function giving each photo's k structures (real photos; default: k-NN in "
                             "the bundled index of library renders)")
    parser.add_argument("--k", type=int, default=5, help="structures retrieved per photo (paper: 5)")
    parser.add_argument("--res", type=int, default=256, help="render resolution for real photos")
    parser.add_argument("--max-photos", type=int, help="score at most this many photos")
    parser.add_argument("--no-lpips", action="store_true", help="skip the LPIPS-style distance (one render and "
                        "backbone pass less per condition and target)")
    parser.add_argument("--per-target", action="store_true", help="also print every target's row (always in --json)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if (args.data is None) == (args.real_photos is None):
        parser.error("give exactly one of --data and --real-photos")
    try:
        if args.real_photos is not None:
            report = evaluate_real_photos(args.checkpoint, args.real_photos, load_retrieval(args.retrieval),
                                          args.k, args.res, args.max_photos)
            print(format_real_report(report))
        else:
            report = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.max_per_graph,
                                         lpips=not args.no_lpips)
            print(format_report(report, per_target=args.per_target))
    except ValueError as err:
        print(f"pretrain_eval: {err}", file=sys.stderr)
        return 2
    print(f"\n({report.seconds:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
