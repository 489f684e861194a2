"""Post-optimisation of one graph's parameters against a target within a time budget.

Two passes, as in the paper's comparison with MATch (gradient descent through a differentiable
graph) and VLMaterial's parameter search (MCMC over the rest):

1. **Gradient**: every predicted parameter whose spec is `differentiable` (floats, colours, vectors
   whose effect is not rounded, thresholded or hashed; `graph_executor.schema.ParamSpec`) is mapped to
   [0, 1] over its range and moved by Adam on the loss −R, with R the appearance reward (paper
   Eq. 5–6) computed by the same executor, renderer and metric as the ranking — through autograd
   (`Plan.run(grad=True)`, `AppearanceMetric.describe(grad=True)`). After each step values are
   clamped back into range.
2. **MCMC** (simulated annealing with batched proposals): the discrete and non-differentiable
   parameters (ints, bools, enums, the floats marked non-differentiable). Each iteration draws
   `mcmc_batch` single-parameter moves from the current state (int: ±1 or a uniform redraw, enum and
   bool: another value, float: a Gaussian step of 10 % of its range), scores them in one executor
   batch, and moves to the best proposal if it is better, or with probability exp(ΔR / T) otherwise;
   T falls linearly from `temperature_start` to `temperature_end` over the pass.

Both passes stop before a step that would overrun the budget (a step's cost is taken from the last
one). The best parameter set seen is re-scored at the end; if it does not beat the start, the start
is returned: refinement never returns a result worse than its input. `history` gives the best reward
against seconds since the start.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from graph_executor.executor import Plan
from graph_executor.ir import Graph
from graph_executor.render import render_flash
from graph_executor.sampling import ParamSet, predicted_parameters
from graph_executor.schema import ParamKind, ParamSpec
from reward_service.metrics import AppearanceMetric, Descriptor


class RefineConfig(BaseModel):
    """Budget split, step sizes and the annealing schedule of `refine`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_s: float = Field(10.0, ge=0, description="wall-clock seconds for both passes together")
    gradient_fraction: float = Field(0.6, ge=0, le=1, description="share of the budget for the gradient pass "
                                     "(all of it when the graph has no discrete parameters, none when it has "
                                     "no differentiable ones)")
    lr: float = Field(0.02, gt=0, description="Adam learning rate, in units of each parameter's range")
    mcmc_batch: int | None = Field(None, ge=1, description="proposals scored together (None: 4 on CPU, 32 on CUDA)")
    float_step: float = Field(0.1, gt=0, description="std of a non-differentiable float's move, fraction of its range")
    temperature_start: float = Field(0.01, gt=0, description="annealing temperature in reward units at the start")
    temperature_end: float = Field(0.001, gt=0)
    max_gradient_steps: int | None = Field(None, ge=0, description="stop the gradient pass after this many "
                                           "steps even with budget left (None: only the budget)")
    max_mcmc_iterations: int | None = Field(None, ge=0, description="the same for the MCMC pass")
    seed: int = 0


@dataclass
class RefineResult:
    params: ParamSet           # the returned parameter set (the start when nothing better was found)
    start_reward: float
    reward: float              # >= start_reward
    history: list[tuple[float, float, str]] = field(default_factory=list)  # (seconds, best reward, phase)
    gradient_steps: int = 0
    mcmc_iterations: int = 0
    mcmc_accepted: int = 0
    seconds: float = 0.0
    improved: bool = False

    def as_dict(self) -> dict:
        return {"start_reward": self.start_reward, "reward": self.reward, "improved": self.improved,
                "gradient_steps": self.gradient_steps, "mcmc_iterations": self.mcmc_iterations,
                "mcmc_accepted": self.mcmc_accepted, "seconds": round(self.seconds, 3),
                "history": [[round(t, 3), r, phase] for t, r, phase in self.history]}


def _full_params(graph: Graph, params: ParamSet) -> ParamSet:
    """Every predicted parameter of the graph, from `params` where given, else the graph's value."""
    out: ParamSet = {}
    for node, spec in predicted_parameters(graph):
        value = params.get(node, {}).get(spec.name, graph.nodes[node].params[spec.name])
        out.setdefault(node, {})[spec.name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _within(spec: ParamSpec, value: float) -> float:
    return float(min(max(value, spec.low), spec.high))


class Refiner:
    """Holds the metric, resolution and device; `refine` post-optimises one parameter set."""

    def __init__(self, metric: AppearanceMetric, res: int = 256, device: str | torch.device = "cpu",
                 config: RefineConfig = RefineConfig()):
        self.metric = metric
        self.res = res
        self.device = torch.device(device)
        self.config = config

    # ---- scoring ------------------------------------------------------------------------------
    def _reward_of(self, images: torch.Tensor, target: Descriptor, grad: bool) -> torch.Tensor:
        terms = self.metric.terms(self.metric.describe(images, grad=grad), target)
        return self.metric.reward(terms)

    def score(self, plan: Plan, param_sets: list[ParamSet], target: Descriptor, seed: int) -> list[float]:
        """Rewards of parameter sets (one batch, no autograd); a non-finite one is -inf."""
        params = plan.stack(param_sets, device=self.device)
        images = render_flash(plan.run(params, res=self.res, seed=seed, device=self.device))
        rewards = self._reward_of(images, target, grad=False).tolist()
        return [r if math.isfinite(r) else -math.inf for r in rewards]

    # ---- the two passes -----------------------------------------------------------------------
    def refine(self, graph: Graph, params: ParamSet, target: torch.Tensor, seed: int = 0,
               budget_s: float | None = None) -> RefineResult:
        """Post-optimise `params` (predicted parameters of `graph`) against `target` (1, 3, H, W) in [0,1]."""
        started = time.perf_counter()
        cfg = self.config
        budget = cfg.budget_s if budget_s is None else float(budget_s)
        plan = Plan(graph)
        target_desc = self.metric.describe(target.to(self.device).float())
        start = _full_params(graph, params)
        start_reward = self.score(plan, [start], target_desc, seed)[0]
        result = RefineResult(start, start_reward, start_reward, [(time.perf_counter() - started, start_reward, "start")])
        leaves = [(n, s) for n, s in predicted_parameters(graph) if s.differentiable and s.high > s.low]
        discrete = [(n, s) for n, s in predicted_parameters(graph) if not s.differentiable
                    and (s.kind in (ParamKind.BOOL, ParamKind.ENUM) or s.high > s.low)]
        share = cfg.gradient_fraction if leaves and discrete else (1.0 if leaves else 0.0)
        best, best_reward = start, start_reward
        if leaves and budget > 0:
            best, best_reward = self._gradient(plan, best, best_reward, leaves, target_desc, seed,
                                               started, started + budget * share, result)
        if discrete:
            best, best_reward = self._mcmc(plan, best, best_reward, discrete, target_desc, seed,
                                           started, started + budget, result)
        final = self.score(plan, [best], target_desc, seed)[0] if best is not start else start_reward
        if final > start_reward:
            result.params, result.reward, result.improved = best, final, True
        result.history.append((time.perf_counter() - started, result.reward, "final"))
        result.seconds = time.perf_counter() - started
        return result

    def _gradient(self, plan: Plan, params: ParamSet, reward: float, leaves: list[tuple[str, ParamSpec]],
                  target: Descriptor, seed: int, started: float, deadline: float, result: RefineResult):
        base = plan.stack([params], device=self.device)
        units = []
        for node, spec in leaves:
            value = torch.as_tensor(params[node][spec.name], dtype=torch.float32, device=self.device).reshape(1, -1)
            units.append(((value - spec.low) / (spec.high - spec.low)).clamp(0, 1).requires_grad_(True))
        optimizer = torch.optim.Adam(units, lr=self.config.lr)
        best_units, best_reward = None, reward
        step_cost = 0.0
        while time.perf_counter() + step_cost < deadline and result.gradient_steps < (
                self.config.max_gradient_steps if self.config.max_gradient_steps is not None else math.inf):
            t0 = time.perf_counter()
            tensors = {node: dict(values) for node, values in base.items()}
            for (node, spec), u in zip(leaves, units):
                value = spec.low + u * (spec.high - spec.low)
                tensors[node][spec.name] = value[:, 0] if spec.kind is ParamKind.FLOAT else value
            images = render_flash(plan.run(tensors, res=self.res, seed=seed, device=self.device, grad=True))
            current = self._reward_of(images, target, grad=True)[0]
            value = float(current.detach())
            if not math.isfinite(value):
                break
            if value > best_reward:
                best_reward, best_units = value, [u.detach().clone() for u in units]
            optimizer.zero_grad(set_to_none=True)
            (-current).backward()
            if any(u.grad is not None and not torch.isfinite(u.grad).all() for u in units):
                break
            optimizer.step()
            with torch.no_grad():
                for u in units:
                    u.clamp_(0, 1)
            result.gradient_steps += 1
            result.history.append((time.perf_counter() - started, best_reward, "gradient"))
            step_cost = time.perf_counter() - t0
        if best_units is None:
            return params, reward
        out = {node: dict(values) for node, values in params.items()}
        for (node, spec), u in zip(leaves, best_units):
            values = [_within(spec, spec.low + float(x) * (spec.high - spec.low)) for x in u.reshape(-1).tolist()]
            out[node][spec.name] = values[0] if spec.kind is ParamKind.FLOAT else values
        return out, best_reward

    def _propose(self, params: ParamSet, discrete: list[tuple[str, ParamSpec]], rng: random.Random) -> ParamSet:
        node, spec = discrete[rng.randrange(len(discrete))]
        value = params[node][spec.name]
        kind = spec.kind
        if kind is ParamKind.BOOL:
            new: Any = not value
        elif kind is ParamKind.ENUM:
            others = [c for c in spec.choices if c != value]
            new = rng.choice(others) if others else value
        elif kind is ParamKind.INT:
            low, high = math.ceil(spec.low), math.floor(spec.high)
            new = value + rng.choice((-1, 1)) if rng.random() < 0.5 else rng.randint(low, high)
            new = int(min(max(new, low), high))
        elif kind is ParamKind.FLOAT:
            new = _within(spec, value + rng.gauss(0.0, self.config.float_step * (spec.high - spec.low)))
        else:
            new = [_within(spec, v + rng.gauss(0.0, self.config.float_step * (spec.high - spec.low))) for v in value]
        out = {n: dict(v) for n, v in params.items()}
        out[node][spec.name] = new
        return out

    def _mcmc(self, plan: Plan, params: ParamSet, reward: float, discrete: list[tuple[str, ParamSpec]],
              target: Descriptor, seed: int, started: float, deadline: float, result: RefineResult):
        cfg = self.config
        batch = cfg.mcmc_batch or (32 if self.device.type == "cuda" else 4)
        rng = random.Random(cfg.seed)
        current, current_reward = params, reward
        best, best_reward = params, reward
        begin = time.perf_counter()
        step_cost = 0.0
        limit = cfg.max_mcmc_iterations if cfg.max_mcmc_iterations is not None else math.inf
        while time.perf_counter() + step_cost < deadline and result.mcmc_iterations < limit:
            t0 = time.perf_counter()
            proposals = [self._propose(current, discrete, rng) for _ in range(batch)]
            rewards = self.score(plan, proposals, target, seed)
            j = max(range(batch), key=rewards.__getitem__)
            fraction = min(1.0, (t0 - begin) / max(deadline - begin, 1e-9))
            temperature = cfg.temperature_start + (cfg.temperature_end - cfg.temperature_start) * fraction
            delta = rewards[j] - current_reward
            if math.isfinite(rewards[j]) and (delta >= 0 or rng.random() < math.exp(delta / temperature)):
                current, current_reward = proposals[j], rewards[j]
                result.mcmc_accepted += 1
                if current_reward > best_reward:
                    best, best_reward = current, current_reward
            result.mcmc_iterations += 1
            result.history.append((time.perf_counter() - started, best_reward, "mcmc"))
            step_cost = time.perf_counter() - t0
        return best, best_reward
