"""Photo in, material out: retrieval -> batched sampling -> batched execution -> ranking -> (refinement) -> files.

`MaterialInference` loads everything once (policy checkpoint, frozen image encoder, retrieval index,
reward worker) and `infer(photo)` runs one photo, timing each phase, so a benchmark can time it
"with the model loaded". For a photo:

  1. load: EXIF orientation, optional quad rectification, centre crop, resize to `res` (`photo.py`);
  2. encode: the checkpoint's frozen encoder gives the image tokens; when the retrieval index was built
     with the same encoder config, its pooled feature is the retrieval query too (one forward pass);
  3. retrieve: the `structures` nearest library structures (paper §5.2, k = 5);
  4. sample: per structure one greedy sequence and `samples - 1` top-p sequences (two batched sampler
     calls over all structures);
  5. execute, render, reward: per structure one reward-worker request (batched executor, flash render,
     appearance reward against the photo), all with the same executor seed;
  6. rank by reward; the random floor is the mean reward of `floor_samples` uniformly random valid
     token sequences (each slot uniform over the tokens its mask admits, issue 11's floor) of the best
     candidate's structure, with the same executor seed;
  7. optionally refine the best (`refine.py`), then write the files (`write`).

`match(target, structures=None, budget=None)` is steps 2-7 for a square target already at `res`; it is
what `matrl eval` (`evaluate.py`) calls: with `structures` given (a synthetic target's true structure)
retrieval is skipped, and `budget` counts the candidates in all (`split_budget` spreads them over the
structures: paper Fig. 11's 5, 25, 50 and 150 samples). `refine(result, seconds)` post-optimises the best
of a result afterwards, so one candidate set serves a run with and one without refinement.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from graph_executor.executor import SUPPORTED_RES, Plan
from graph_executor.ir import Graph
from graph_executor.library import load_library_graph
from graph_executor.render import render_flash
from policy.batching import PolicyBatch, collate
from policy.checkpoint import load_policy, read_checkpoint_info
from policy.encoders import EncoderConfig
from policy.sampler import Sampler, SamplingConfig
from policy.tokenizer import GraphTokenizer, Vocabulary
from reward_service.api import LIBRARY_PREFIX, ScoreRequest
from reward_service.config import RewardConfig
from reward_service.worker import RewardWorker
from rollout_workers.targets import Structure

def pad_slots(batch: PolicyBatch, multiple: int) -> PolicyBatch:
    """The batch with its slot axis padded to a multiple of `multiple` (padded slots: mask False, only
    token 0 admitted, ignored by the detokenizer, which reads each graph's own slots). Greedy tokens
    are unchanged; top-p draws differ from the unpadded batch's for a seed (its uniforms are laid out
    per slot count) but are draws of the same distribution."""
    s = batch.num_slots
    extra = (-s) % multiple
    if extra == 0:
        return batch
    b = batch.size

    def grow(t: torch.Tensor, fill=0) -> torch.Tensor:
        pad = torch.full((b, extra, *t.shape[2:]), fill, dtype=t.dtype, device=t.device)
        return torch.cat([t, pad], 1)

    masks = grow(batch.token_masks, False)
    masks[:, s:, 0] = True
    return replace(batch, slot_node=grow(batch.slot_node), slot_param=grow(batch.slot_param),
                   slot_component=grow(batch.slot_component), slot_mask=grow(batch.slot_mask, False),
                   token_masks=masks, tokens=None if batch.tokens is None else grow(batch.tokens))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_budget(budget: int, structures: int) -> list[int]:
    """Candidates per structure for a total `budget` over `structures` (most similar first): as even as
    possible, the first ones getting the remainder (25 over 5: 5 each; 2 over 5: 1, 1, 0, 0, 0). Each
    structure's first candidate is its greedy sequence, the rest are top-p draws."""
    if budget < 1 or structures < 1:
        raise ValueError(f"a budget of {budget} candidates over {structures} structures: both must be >= 1")
    return [budget // structures + (1 if j < budget % structures else 0) for j in range(structures)]


class _Clock:
    """Adds the seconds since the last lap to `timings[phase]` (synchronising CUDA first)."""

    def __init__(self, device: torch.device, timings: dict[str, float], started: float | None = None):
        self.device = device
        self.timings = timings
        self.started = time.perf_counter() if started is None else started
        self.t = self.started

    def lap(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self.t
        self.t = now

    def skip(self) -> None:
        """Start the next lap now (time since the last lap is already accounted elsewhere)."""
        self.t = time.perf_counter()

    def total(self) -> float:
        return time.perf_counter() - self.started


def supported_res(value: int) -> int:
    """`value` if the executor renders at it, else a ValueError naming the choices (config validators)."""
    if value not in SUPPORTED_RES:
        raise ValueError(f"resolution {value} is not supported; use a power of two in "
                         f"{SUPPORTED_RES[0]}..{SUPPORTED_RES[-1]}")
    return value


class InferConfig(BaseModel):
    """What `matrl infer` does with a photo (the CLI flags map onto these fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    structures: int = Field(5, ge=1, le=70, description="retrieved structures (paper: 5)")
    samples: int = Field(5, ge=1, description="candidates per structure: 1 greedy + samples-1 top-p")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus of the sampled candidates (paper: 0.9)")
    temperature: float = Field(1.0, gt=0)
    res: int = Field(256, description="resolution of the photo crop, the candidates and the reward")
    out_res: int = Field(1024, description="resolution of the written maps and render")
    seed: int = Field(0, ge=0, description="sampling seed and executor seed (the graph's render seed)")
    floor_samples: int = Field(8, ge=1, description="uniformly random token sequences for the random floor")
    runner_ups: int = Field(3, ge=0, description="runner-up candidates shown in the side-by-side")
    refine_s: float = Field(0.0, ge=0, description="post-optimisation budget in seconds (0: off)")
    device: str = Field("auto", description="auto: cuda when present")

    @field_validator("res", "out_res")
    @classmethod
    def _supported(cls, value: int) -> int:
        return supported_res(value)


@dataclass
class Candidate:
    structure_id: str
    kind: str                    # "greedy" | "sampled"
    params: dict[str, dict[str, Any]]
    reward: float
    ok: bool
    error: str = ""
    retrieval_score: float = 0.0

    def summary(self) -> dict:
        return {"structure": self.structure_id, "kind": self.kind, "reward": self.reward, "ok": self.ok,
                "retrieval_score": self.retrieval_score, **({"error": self.error} if self.error else {})}


@dataclass
class InferenceResult:
    photo: str
    target: np.ndarray                      # (res, res, 3) uint8, what was matched
    candidates: list[Candidate]             # best first
    best: Candidate
    best_graph: Graph                       # the best structure with its (refined) parameters
    best_reward: float
    random_floor_reward: float
    timings_s: dict[str, float] = field(default_factory=dict)
    refine: dict | None = None

    def summary(self) -> dict:
        return {"photo": self.photo, "best_reward": self.best_reward,
                "random_floor_reward": self.random_floor_reward,
                "best": self.best.summary(),
                "candidates": [c.summary() for c in self.candidates],
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
                "refine": self.refine}


class MaterialInference:
    """Policy, encoder, retrieval index and reward worker, loaded once; `infer` runs one photo."""

    def __init__(self, checkpoint: str | Path, config: InferConfig = InferConfig(), index=None,
                 reward: RewardWorker | None = None):
        """`index` and `reward` may be shared between engines (e.g. the models `matrl eval` compares); the
        reward worker must score at `config.res`."""
        from policy.retrieval import default_index

        self.config = config
        self.device = resolve_device(config.device)
        self.checkpoint = Path(checkpoint)
        read_checkpoint_info(self.checkpoint)  # a clear CheckpointError before anything heavy loads
        self.policy, self.info = load_policy(self.checkpoint, self.device)
        self.policy.eval()
        self.vocab = Vocabulary.from_dict(self.info.policy.vocab)
        self.index = index if index is not None else default_index(str(self.device))
        encoder_config = EncoderConfig.model_validate(self.info.encoder)
        self.shared_encoder = encoder_config == self.index.encoder_config
        self.encoder = self.index.encoder if self.shared_encoder else encoder_config.build().to(self.device)
        self.greedy = Sampler(self.policy, SamplingConfig(greedy=True))
        self.sampler = Sampler(self.policy, SamplingConfig(top_p=config.top_p, temperature=config.temperature))
        if reward is not None and reward.config.res != config.res:
            raise ValueError(f"the shared reward worker scores at {reward.config.res}, the config at {config.res}")
        self.reward = reward or RewardWorker(RewardConfig(res=config.res, device=str(self.device), torch_threads=None,
                                                          retain_freed_memory=False))
        self._graphs: dict[str, tuple[Graph, GraphTokenizer, str]] = {}

    def _structure(self, structure_id: str) -> tuple[Graph, GraphTokenizer]:
        """A library structure by name, or one registered by `add_structure`."""
        if structure_id not in self._graphs:
            graph = load_library_graph(structure_id)
            self._graphs[structure_id] = (graph, GraphTokenizer(graph, self.vocab), LIBRARY_PREFIX + structure_id)
        return self._graphs[structure_id][:2]

    def add_structure(self, structure: Structure) -> str:
        """Make a target's structure known (a library graph or any other, e.g. a dataset's generated one);
        returns its id."""
        if structure.structure_id not in self._graphs:
            from graph_executor.ir import loads_graph

            graph = load_library_graph(structure.structure_id) if structure.library else loads_graph(structure.graph_json)
            self._graphs[structure.structure_id] = (graph, GraphTokenizer(graph, self.vocab), structure.reward_structure)
        return structure.structure_id

    def _score(self, structure_id: str, param_sets: list[dict], target: np.ndarray, timings: dict) -> list:
        """Reward-worker results for parameter sets of one structure, all with the config's seed."""
        self._structure(structure_id)
        results = self.reward.score(ScoreRequest(structure=self._graphs[structure_id][2],
                                                 seeds=[self.config.seed] * len(param_sets),
                                                 target=target, param_sets=param_sets))
        for phase in ("prepare", "execute", "render", "reward"):
            timings[phase] = timings.get(phase, 0.0) + sum(r.timings.get(phase, 0.0) for r in results)
        return results

    def random_floor(self, structure_id: str, target: np.ndarray, timings: dict | None = None) -> float:
        """Mean reward of `floor_samples` uniformly random valid token sequences of the structure."""
        _, tokenizer = self._structure(structure_id)
        rng = np.random.default_rng([self.config.seed, 11])
        valid = tokenizer.masks.sum(1).numpy()
        tokens = (rng.random((self.config.floor_samples, len(valid))) * valid).astype(np.int64)
        results = self._score(structure_id, tokenizer.detokenize_batch(tokens), target, timings if timings is not None else {})
        rewards = [r.reward for r in results]
        return float(np.mean(rewards))

    @torch.no_grad()
    def infer(self, photo: str | Path | np.ndarray, quad: Sequence[tuple[float, float]] | None = None,
              name: str | None = None) -> InferenceResult:
        """Run one photo (a path, or an (H, W, 3) uint8 array already square) through the pipeline."""
        from matrl.infer.photo import load_photo
        from rollout_workers.targets import square_crop

        cfg = self.config
        timings: dict[str, float] = {}
        clock = _Clock(self.device, timings)
        if isinstance(photo, np.ndarray):
            from PIL import Image
            target = square_crop(Image.fromarray(photo), cfg.res)
            name = name or "array"
        else:
            target = load_photo(photo, cfg.res, quad)
            name = name or str(photo)
        clock.lap("load")
        return self.match(target, name=name, clock=clock, refine_s=cfg.refine_s)

    @torch.no_grad()
    def match(self, target: np.ndarray, structures: Sequence[Structure] | None = None, budget: int | None = None,
              floor: bool = True, refine_s: float = 0.0, name: str = "array", clock: _Clock | None = None
              ) -> InferenceResult:
        """Match a (res, res, 3) uint8 target: encode, retrieve `config.structures` structures unless
        `structures` are given (then retrieval is skipped: a synthetic target's true structure), sample
        `budget` candidates in all (default: structures x `config.samples`; `split_budget`), score, rank,
        the random floor when `floor`, refinement for `refine_s` seconds. `timings_s["total"]` is the wall
        time of all of it."""
        cfg = self.config
        if target.shape != (cfg.res, cfg.res, 3) or target.dtype != np.uint8:
            raise ValueError(f"{name}: match needs a ({cfg.res}, {cfg.res}, 3) uint8 target, got "
                             f"{target.shape} {target.dtype}")
        clock = clock or _Clock(self.device, {})
        timings = clock.timings
        image = torch.from_numpy(np.array(target)).permute(2, 0, 1)[None].to(self.device).float() / 255
        encoded = self.encoder(image)
        clock.lap("encode")
        if structures is not None:
            if not structures:
                raise ValueError(f"{name}: an empty list of structures")
            ids = [self.add_structure(s) for s in structures]
            scores = [0.0] * len(ids)  # no retrieval: no similarity score
        else:
            if self.shared_encoder:
                retrieved = self.index.retrieve_embedded(encoded.pooled.float().cpu().numpy(), cfg.structures)[0]
            else:
                retrieved = self.index.retrieve(target, cfg.structures)
            ids, scores = [r.structure_id for r in retrieved], [r.score for r in retrieved]
            clock.lap("retrieve")
        counts = split_budget(budget if budget is not None else len(ids) * cfg.samples, len(ids))
        ids, scores, counts = zip(*[(i, s, c) for i, s, c in zip(ids, scores, counts) if c > 0])

        structures_ = [self._structure(s) for s in ids]
        batch = collate([tok.structure() for _, tok in structures_])
        if self.device.type == "cuda":  # few distinct shapes, so the sampler's CUDA graphs are replayed, not recaptured
            batch = pad_slots(batch, SamplingConfig().kv_bucket)
        tokens = encoded.tokens.expand(len(ids), -1, -1)
        greedy = self.greedy.sample(batch, tokens, seed=cfg.seed, samples_per_graph=1).tokens.cpu().numpy()
        extra = max(counts) - 1  # top-p draws per structure; a structure with fewer candidates takes its first ones
        sampled = (self.sampler.sample(batch, tokens, seed=cfg.seed, samples_per_graph=extra)
                   .tokens.cpu().numpy() if extra > 0 else np.zeros((0, batch.num_slots), np.int64))
        per_structure = []
        for g, ((graph, tok), count) in enumerate(zip(structures_, counts)):
            rows = [greedy[g]] + [sampled[g * extra + j] for j in range(count - 1)]
            per_structure.append(tok.detokenize_batch(np.stack(rows)[:, :len(tok)]))
        clock.lap("sample")

        candidates: list[Candidate] = []
        for sid, score, param_sets in zip(ids, scores, per_structure):
            results = self._score(sid, param_sets, target, timings)
            for j, (params, res) in enumerate(zip(param_sets, results)):
                candidates.append(Candidate(sid, "greedy" if j == 0 else "sampled", params, res.reward,
                                            res.ok, res.error, score))
        candidates.sort(key=lambda c: c.reward if c.ok else -math.inf, reverse=True)
        clock.skip()  # the reward worker's own timings split this phase
        best = candidates[0]
        floor_reward = math.nan
        if floor:
            floor_reward = self.random_floor(best.structure_id, target, {})
            clock.lap("floor")

        graph, _ = self._structure(best.structure_id)
        timings["total"] = clock.total()
        result = InferenceResult(name, target, candidates, best, graph.with_params(best.params), best.reward,
                                 floor_reward, timings)
        if refine_s > 0:
            result = self.refine(result, refine_s, image)
        return result

    def refine(self, result: InferenceResult, budget_s: float, image: torch.Tensor | None = None) -> InferenceResult:
        """A copy of `result` whose best candidate was post-optimised for `budget_s` seconds (`refine.py`; kept
        only if it improved); `timings_s` gains "refine" and its "total" grows by the refinement's wall time."""
        from matrl.infer.refine import RefineConfig, Refiner

        cfg = self.config
        timings = dict(result.timings_s)
        clock = _Clock(self.device, timings)
        best = result.best
        graph, _ = self._structure(best.structure_id)
        best_params, best_reward, summary = best.params, best.reward, None
        if best.ok:
            if image is None:
                image = torch.from_numpy(np.array(result.target)).permute(2, 0, 1)[None].to(self.device).float() / 255
            refiner = Refiner(self.reward.metric, cfg.res, self.device, RefineConfig(budget_s=budget_s, seed=cfg.seed))
            with torch.enable_grad():
                refined = refiner.refine(graph, best.params, image, seed=cfg.seed)
            summary = refined.as_dict()
            if refined.improved:
                best_params, best_reward = refined.params, refined.reward
        clock.lap("refine")
        timings["total"] = result.timings_s.get("total", 0.0) + timings["refine"]
        return replace(result, best_graph=graph.with_params(best_params), best_reward=best_reward,
                       timings_s=timings, refine=summary)

    def write(self, result: InferenceResult, out_dir: str | Path) -> dict[str, Path]:
        """Write graph.json, the five maps and render.png at `out_res`, material.gltf (+ packed texture),
        target.png, side_by_side.png and summary.json; returns them by name."""
        from matrl.commands.render import MAP_NAMES, render_to_dir
        from matrl.infer.gltf import write_gltf
        from matrl.infer.sheet import side_by_side

        t0 = time.perf_counter()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        graph = result.best_graph
        graph.meta = dict(graph.meta, infer={"photo": Path(result.photo).name, "reward": result.best_reward,
                                             "seed": cfg.seed, "render": f"matrl render graph.json --seed {cfg.seed}"})
        files = {"graph": out / "graph.json"}
        files["graph"].write_text(graph.to_json())
        for path in render_to_dir(graph, out, cfg.out_res, cfg.seed, str(self.device)):
            files[path.stem] = path
        files["gltf"] = write_gltf(out)
        files["metallic_roughness"] = out / "metallic_roughness.png"
        from PIL import Image
        files["target"] = out / "target.png"
        Image.fromarray(result.target).save(files["target"])
        runner_ups = [c for c in result.candidates[1:] if c.ok][:cfg.runner_ups]
        renders = [self._render(c.structure_id, c.params) for c in runner_ups]
        files["side_by_side"] = out / "side_by_side.png"
        side_by_side(result.target, [out / f"{n}.png" for n in ("render", *MAP_NAMES)],
                     [(f"{c.structure_id} {c.reward:.3f}", r) for c, r in zip(runner_ups, renders)],
                     title=f"best {result.best.structure_id}: {result.best_reward:.3f} "
                           f"(random floor {result.random_floor_reward:.3f})").save(files["side_by_side"])
        result.timings_s["write"] = time.perf_counter() - t0
        summary = result.summary()
        summary.update(checkpoint=str(self.checkpoint), seed=cfg.seed, res=cfg.res, out_res=cfg.out_res,
                       files={k: p.name for k, p in files.items()})
        files["summary"] = out / "summary.json"
        files["summary"].write_text(json.dumps(summary, indent=1))
        return files

    def render(self, structure_id: str, params: dict) -> torch.Tensor:
        """The flash render (1, 3, res, res) float in [0, 1] of a candidate, at `res` with the config's seed:
        the image its reward was computed from."""
        graph, _ = self._structure(structure_id)
        plan = Plan(graph)
        with torch.no_grad():
            return render_flash(plan.run(plan.stack([params], device=self.device), res=self.config.res,
                                         seed=self.config.seed, device=self.device))

    def render_graph(self, graph: Graph) -> torch.Tensor:
        """The flash render (1, 3, res, res) of a graph with its own parameter values (e.g. a result's
        `best_graph`, refined or not), at `res` with the config's seed."""
        plan = Plan(graph)
        with torch.no_grad():
            return render_flash(plan.run(plan.stack(device=self.device), res=self.config.res, seed=self.config.seed,
                                         device=self.device))

    def _render(self, structure_id: str, params: dict) -> np.ndarray:
        image = self.render(structure_id, params)[0]
        return (image.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
