"""`matrl eval`: top-1 quality and time of policy checkpoints on held-out targets (paper §6, Tables 1-2, Fig. 11).

Protocol. For every target, every model and every sampling budget N, one run of the inference pipeline
(`MaterialInference.match`, the candidate pipeline of `matrl infer`) produces N candidates, scores them
with the appearance reward against the target and keeps the top-1:

  * synthetic test split (`split="test"`): the target's true structure is given (no retrieval) and all N
    candidates are parameter sequences for it (1 greedy + N−1 top-p): the paper's "5 samples, top-1";
    targets are rows of a `matrl gen-data` dataset's test split (`data`) or renders of held-out library
    graphs made on the fly (`graphs`; `RenderedTargets`, seeded by `target_seed`);
  * real photos (`split="real"`): the photo's `structures` nearest library structures are retrieved and
    N is spread over them (`split_budget`: 25 = 5 per structure, the paper's Table 2 setting).

The budgets are the table setting (structures x `samples`) plus the sweep `budgets` (paper Fig. 11:
5, 25, 50, 150). With `refine_s` > 0 each run's top-1 is also post-optimised (`MaterialInference.refine`),
a second setting whose time is the run's plus the refinement's.

Measured per run: the top-1's appearance reward and LPIPS-style distance to the target
(`AppearanceMetric.evaluate` on a fresh render of the top-1: the same render the ranking scored, so the
reward equals the ranking's), and the wall time of producing the top-1 (encode, retrieve, sample,
execute, render, score, rank; + refine), excluding the evaluation render. Timing is fair between models:
one untimed warm-up run per model, the reward worker's target-descriptor cache is emptied before every
run (each run describes its target, as a fresh photo would), and the order of the models alternates
from target to target. Structures' compiled plans stay cached, as in a long-lived service.

`Evaluator.run` returns an `EvalResult` (rows per target x model x budget x refine, summaries with
mean and 95 % t-intervals from `learner.stats.Stat`, paired differences against the baseline);
`matrl.reports.eval_report` writes it as CSV, Markdown, JSON, the quality-versus-time PNG and an HTML
report.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from learner.stats import Stat
from matrl.infer.pipeline import InferConfig, InferenceResult, MaterialInference, resolve_device, supported_res
from rollout_workers.targets import Structure

FALLBACK_TEST_PRESET = ("pretrain", "online")  # its data.held_out.library: the project's held-out library graphs


class EvalConfig(BaseModel):
    """What `matrl eval` measures (the CLI flags map onto these fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["test", "real"] = Field("test", description="synthetic held-out targets, or real photos")
    data: Path | None = Field(None, description="test: a `matrl gen-data` dataset; its test split's rows")
    graphs: list[str] | None = Field(None, description="test without data: library graphs rendered on the fly "
                                     "(None: the checkpoint's held-out library graphs, else the online preset's)")
    photos: Path | None = Field(None, description="real: a directory of photos (searched recursively)")
    targets: int = Field(20, ge=0, description="targets to evaluate (0: every row / photo; render mode needs > 0)")
    target_seed: int = Field(1, ge=0, description="which targets: the render stream, the row / photo selection")
    structures: int = Field(5, ge=1, le=70, description="real: structures retrieved per photo (paper: 5)")
    samples: int = Field(5, ge=1, description="candidates per structure of the table setting (paper: 5)")
    budgets: tuple[int, ...] = Field((), description="further total candidate budgets (paper Fig. 11: 5, 25, 50, 150)")
    refine_s: float = Field(0.0, ge=0, description="also post-optimise each top-1 for this many seconds (0: off)")
    res: int = Field(256, description="resolution of targets, candidates and the reward")
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = Field(0, ge=0, description="sampling and executor seed")
    device: str = "auto"
    grid_px: int = Field(128, ge=16, le=512, description="side of the images in the report's grids")

    @field_validator("res")
    @classmethod
    def _supported(cls, value: int) -> int:
        return supported_res(value)

    @field_validator("budgets")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [b for b in value if b < 1]
        if bad:
            raise ValueError(f"budgets must be >= 1 candidates, got {bad}")
        return value

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if self.split == "real":
            if self.photos is None:
                raise ValueError("split 'real' needs photos (a directory of photos)")
            if self.data is not None or self.graphs is not None:
                raise ValueError("split 'real' takes photos, not data or graphs")
        else:
            if self.photos is not None:
                raise ValueError("photos are for split 'real'; split 'test' takes data or graphs")
            if self.data is not None and self.graphs is not None:
                raise ValueError("give data (a gen-data dataset) or graphs (rendered on the fly), not both")
            if self.data is None and self.targets == 0:
                raise ValueError("targets 0 (all) needs a dataset or photos; rendered targets are unlimited")
        return self

    @property
    def structures_per_target(self) -> int:
        """Structures a target's candidates are spread over: the true one, or the k retrieved."""
        return 1 if self.split == "test" else self.structures

    @property
    def table_budget(self) -> int:
        return self.structures_per_target * self.samples

    @property
    def all_budgets(self) -> list[int]:
        return sorted({self.table_budget, *self.budgets})

    @property
    def refine_settings(self) -> list[float]:
        return [0.0, self.refine_s] if self.refine_s > 0 else [0.0]


@dataclass
class ModelSpec:
    label: str
    checkpoint: Path


@dataclass
class EvalTarget:
    target_id: str
    kind: str                              # "synthetic" | "real"
    image: np.ndarray                      # (res, res, 3) uint8
    structures: list[Structure] | None     # the true structure; None: retrieve


@dataclass
class EvalRow:
    """One run: a target, a model, a budget and a refinement setting."""

    target: str
    model: str
    budget: int
    refine_s: float
    reward: float          # top-1 reward (AppearanceMetric.evaluate); the failure reward when every candidate failed
    lpips: float           # LPIPS-style distance of the top-1 (NaN when it failed)
    seconds: float         # wall time of producing the top-1
    structures: int        # structures the candidates were spread over
    best_structure: str
    best_kind: str         # greedy | sampled
    ok: bool
    ranking_reward: float  # the reward the pipeline ranked (or refined) by; equals `reward` up to float noise
    image: np.ndarray | None = field(default=None, repr=False)  # the top-1 render, grid_px², for the report

    CSV_COLUMNS = ("target", "model", "budget", "refine_s", "reward", "lpips", "seconds", "structures",
                   "best_structure", "best_kind", "ok")

    def csv_row(self) -> list:
        return [getattr(self, c) for c in self.CSV_COLUMNS]


def setting_name(budget: int, refine_s: float) -> str:
    return f"{budget} samples" + (f" + refine {refine_s:g} s" if refine_s > 0 else "")


@dataclass
class Summary:
    model: str
    budget: int
    refine_s: float
    reward: Stat
    lpips: Stat
    seconds: Stat
    failures: int

    @property
    def setting(self) -> str:
        return setting_name(self.budget, self.refine_s)


@dataclass
class PairedSummary:
    """Model minus baseline on the same targets (positive reward / negative LPIPS: the model is better)."""

    model: str
    baseline: str
    budget: int
    refine_s: float
    reward: Stat
    lpips: Stat

    @property
    def setting(self) -> str:
        return setting_name(self.budget, self.refine_s)


@dataclass
class EvalResult:
    config: EvalConfig
    models: list[ModelSpec]
    targets: list[EvalTarget]
    rows: list[EvalRow]
    lpips_name: str
    skipped: list[str] = field(default_factory=list)   # targets left out, with the reason
    source: str = ""                                   # where the targets came from, in words
    machine: dict = field(default_factory=dict)
    started: str = ""
    seconds: float = 0.0

    def settings(self) -> list[tuple[int, float]]:
        return [(b, r) for r in self.config.refine_settings for b in self.config.all_budgets]

    def select(self, model: str, budget: int, refine_s: float) -> list[EvalRow]:
        return [r for r in self.rows if r.model == model and r.budget == budget and r.refine_s == refine_s]

    def summaries(self) -> list[Summary]:
        out = []
        for model in self.models:
            for budget, refine_s in self.settings():
                rows = self.select(model.label, budget, refine_s)
                out.append(Summary(model.label, budget, refine_s, Stat.of([r.reward for r in rows]),
                                   Stat.of([r.lpips for r in rows if r.ok]), Stat.of([r.seconds for r in rows]),
                                   sum(not r.ok for r in rows)))
        return out

    def paired(self) -> list[PairedSummary]:
        """Every model against the last one (the baseline), per setting, over the targets both matched."""
        if len(self.models) < 2:
            return []
        base = self.models[-1].label
        out = []
        for model in self.models[:-1]:
            for budget, refine_s in self.settings():
                mine = {r.target: r for r in self.select(model.label, budget, refine_s)}
                theirs = {r.target: r for r in self.select(base, budget, refine_s)}
                both = [t for t in mine if t in theirs]
                ok = [t for t in both if mine[t].ok and theirs[t].ok]
                out.append(PairedSummary(model.label, base, budget, refine_s,
                                         Stat.paired([mine[t].reward for t in both], [theirs[t].reward for t in both]),
                                         Stat.paired([mine[t].lpips for t in ok], [theirs[t].lpips for t in ok])))
        return out


# ---- targets ------------------------------------------------------------------------------------

def default_test_graphs(checkpoint: Path | None = None) -> tuple[list[str], str]:
    """Held-out library graphs to render test targets from, and where the list came from: the checkpoint's
    training config (`train.data.held_out.library`, an online pre-training run) when it records one, else
    the `online` pre-training preset's held-out list."""
    import json

    from matrl.config import config_path, read_yaml

    if checkpoint is not None and (checkpoint / "config.json").is_file():
        train = json.loads((checkpoint / "config.json").read_text()).get("train") or {}
        held = ((train.get("data") or {}).get("held_out") or {}).get("library") if isinstance(train, dict) else None
        if held:
            return list(held), f"held-out library graphs of {checkpoint.name}'s training config"
    kind, name = FALLBACK_TEST_PRESET
    data = read_yaml(config_path(kind, name))
    return list(data["data"]["held_out"]["library"]), f"held-out library graphs of the `{name}` pre-training preset"


def _resized(image: np.ndarray, res: int) -> np.ndarray:
    if image.shape[:2] == (res, res):
        return image
    from PIL import Image

    from rollout_workers.targets import square_crop

    return square_crop(Image.fromarray(image), res)


def load_targets(config: EvalConfig, checkpoint: Path | None = None) -> tuple[list[EvalTarget], list[str], str]:
    """The targets a config describes, the ones skipped (with reasons) and their source in words.
    Raises ValueError (or DatasetError / PhotoError) naming the culprit."""
    if config.split == "real":
        return _photo_targets(config)
    if config.data is not None:
        from rollout_workers.targets import DatasetTargets

        source = DatasetTargets(config.data, "test")
        n = len(source.data)
        if config.targets and config.targets < n:
            picked = np.random.default_rng(config.target_seed).permutation(n)[:config.targets]
            rows = sorted(int(r) for r in picked)
        else:
            rows = list(range(n))
        targets = [source.target(r) for r in rows]
        where = f"{len(rows)} of the {n} rows of the test split of {config.data} (structures never trained on)"
    else:
        from graph_executor.library import library_names, load_library_graph
        from rollout_workers.targets import RenderedTargets

        if config.graphs is not None:
            names, why = list(config.graphs), "graphs given"
        else:
            names, why = default_test_graphs(checkpoint)
        unknown = sorted(set(names) - set(library_names()))
        if unknown:
            raise ValueError(f"graphs: {', '.join(unknown)} not in the library (`matrl graphs list` shows it)")
        if not names:
            raise ValueError("graphs: an empty list")
        source = RenderedTargets({n: load_library_graph(n) for n in names}, config.res, config.target_seed)
        targets = source.fixed(config.targets)
        where = (f"{config.targets} renders of {len(names)} library graphs ({why}: {', '.join(sorted(names))}), "
                 f"parameters drawn around their authored values, target seed {config.target_seed}")
    return [EvalTarget(t.target_id, t.kind, _resized(t.image, config.res), list(t.structures)) for t in targets], [], where


def _photo_targets(config: EvalConfig) -> tuple[list[EvalTarget], list[str], str]:
    from graph_executor.degeneracy import degeneracy_reasons
    from rollout_workers.targets import PhotoError, PhotoTargets, load_photo

    paths = PhotoTargets.find(config.photos)
    if not paths:
        raise ValueError(f"{config.photos}: no photos (png, jpg, tif, webp, bmp) in it")
    order = np.random.default_rng(config.target_seed).permutation(len(paths)) if config.targets else range(len(paths))
    want = config.targets or len(paths)
    targets, skipped = [], []
    for i in order:
        if len(targets) == want:
            break
        path = paths[int(i)]
        name = str(path.relative_to(config.photos))
        try:
            image = load_photo(path, config.res)
        except PhotoError as err:
            skipped.append(f"{name}: {err}")
            continue
        reason = degeneracy_reasons(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255)[0]
        if reason is not None:
            skipped.append(f"{name}: {reason} (a failed capture)")
            continue
        targets.append(EvalTarget(f"photo/{Path(name).with_suffix('')}", "real", image, None))
    if not targets:
        raise ValueError(f"{config.photos}: no usable photo ({len(skipped)} skipped: {skipped[:3]})")
    targets.sort(key=lambda t: t.target_id)
    where = (f"{len(targets)} of the {len(paths)} photos under {config.photos}"
             f"{' (seeded selection)' if len(targets) < len(paths) else ''}, each with its "
             f"{config.structures} nearest library structures")
    return targets, skipped, where


def machine_text(info: dict) -> str:
    """`machine_info` in words, for the reports."""
    where = f"{info.get('gpu')} ({info.get('device')})" if info.get("gpu") else info.get("device", "?")
    return (f"{where}; {info.get('processor')} with {info.get('cpus')} CPUs, {info.get('torch_threads')} torch "
            f"threads; torch {info.get('torch')}; {info.get('platform')}")


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---- the runs -----------------------------------------------------------------------------------

class Evaluator:
    """The models' inference engines (sharing one retrieval index and one reward worker) and the runs."""

    def __init__(self, models: Sequence[ModelSpec], config: EvalConfig, index=None):
        from policy.retrieval import default_index
        from reward_service.config import RewardConfig
        from reward_service.worker import RewardWorker

        if not models:
            raise ValueError("no model to evaluate")
        labels = [m.label for m in models]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model labels must differ, got {labels}")
        self.models = list(models)
        self.config = config
        self.device = resolve_device(config.device)
        infer_config = InferConfig(structures=config.structures, samples=config.samples, top_p=config.top_p,
                                   res=config.res, out_res=config.res, seed=config.seed, device=str(self.device))
        index = index if index is not None else default_index(str(self.device))
        self.reward = RewardWorker(RewardConfig(res=config.res, device=str(self.device), torch_threads=None,
                                                retain_freed_memory=False))
        self.engines = [MaterialInference(m.checkpoint, infer_config, index=index, reward=self.reward)
                        for m in self.models]
        self.metric = self.reward.metric

    def _measure(self, engine: MaterialInference, result: InferenceResult, target: torch.Tensor,
                 model: str, target_id: str, budget: int, refine_s: float) -> EvalRow:
        best = result.best
        structures = len({c.structure_id for c in result.candidates})
        if not best.ok:
            return EvalRow(target_id, model, budget, refine_s, result.best_reward, math.nan,
                           result.timings_s["total"], structures, best.structure_id, best.kind, False, result.best_reward)
        with torch.no_grad():
            pred = engine.render_graph(result.best_graph)
            metrics = self.metric.evaluate(pred, target)
        thumb = torch.nn.functional.interpolate(pred.float().cpu(), size=(self.config.grid_px,) * 2, mode="area")
        image = (thumb[0].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
        return EvalRow(target_id, model, budget, refine_s, float(metrics["reward"][0]),
                       float(metrics[self.metric.lpips_name][0]), result.timings_s["total"], structures,
                       best.structure_id, best.kind, True, result.best_reward, image)

    def _runs(self, engine: MaterialInference, target: EvalTarget, model: str, budget: int) -> list[EvalRow]:
        self.reward.targets.clear()  # every run describes its target itself, as for a new photo
        result = engine.match(target.image, target.structures, budget, floor=False, name=target.target_id)
        image = torch.from_numpy(target.image.copy()).permute(2, 0, 1)[None].to(self.device).float() / 255
        rows = [self._measure(engine, result, image, model, target.target_id, budget, 0.0)]
        if self.config.refine_s > 0:
            refined = engine.refine(result, self.config.refine_s, image)
            rows.append(self._measure(engine, refined, image, model, target.target_id, budget, self.config.refine_s))
        return rows

    def run(self, targets: Sequence[EvalTarget], progress: bool = True, skipped: Sequence[str] = (),
            source: str = "") -> EvalResult:
        from tqdm import tqdm

        if not targets:
            raise ValueError("no target to evaluate")
        started = time.perf_counter()
        date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        budgets = self.config.all_budgets
        for engine in self.engines:  # untimed warm-up: first-call costs (allocations, kernels) out of the runs
            engine.match(targets[0].image, targets[0].structures, budgets[0], floor=False)
        rows: list[EvalRow] = []
        total = len(targets) * len(self.engines) * len(budgets)
        with tqdm(total=total, desc="eval", unit="run", disable=not progress, dynamic_ncols=True) as bar:
            for t, target in enumerate(targets):
                order = [(t + j) % len(self.engines) for j in range(len(self.engines))]  # alternate who goes first
                for m in order:
                    for budget in budgets:
                        bar.set_postfix_str(f"{target.target_id} | {self.models[m].label} | {budget}", refresh=False)
                        rows.extend(self._runs(self.engines[m], target, self.models[m].label, budget))
                        bar.update(1)
        return EvalResult(self.config, self.models, list(targets), rows, self.metric.lpips_name, list(skipped),
                          source, machine_info(self.device), date, time.perf_counter() - started)
