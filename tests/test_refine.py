"""Post-optimisation (matrl.infer.refine): never lowers the reward it reports; the gradient pass fixes a
continuous mismatch and the MCMC pass a discrete one. Step counts are capped so no test depends on speed."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from graph_executor.executor import Plan
from graph_executor.ir import parse_graph
from graph_executor.library import load_library_graph
from graph_executor.render import render_flash
from graph_executor.sampling import predicted_parameters
from matrl.infer.refine import RefineConfig, Refiner
from policy.tokenizer import GraphTokenizer
from reward_service.metrics import AppearanceMetric

RES = 64
BIG_BUDGET = 600.0  # the step caps end these runs, not the clock


@functools.lru_cache(maxsize=1)
def metric() -> AppearanceMetric:
    torch.set_num_threads(1)
    return AppearanceMetric()


def _target(graph, params=None, seed: int = 0) -> torch.Tensor:
    plan = Plan(graph)
    with torch.no_grad():
        return render_flash(plan.run(plan.stack([params or {}]), res=RES, seed=seed))


def _random_start(graph, seed: int) -> dict:
    tok = GraphTokenizer(graph)
    rng = np.random.default_rng(seed)
    valid = tok.masks.sum(1).numpy()
    return tok.detokenize((rng.random(len(valid)) * valid).astype(np.int64))


@pytest.mark.parametrize("name,seed", [("red_plastic", 0), ("red_bricks", 1), ("green_marble", 2)])
def test_refine_never_lowers_the_reward_it_reports(name, seed):
    graph = load_library_graph(name)
    target = _target(graph, seed=5)
    start = _random_start(graph, seed)
    refiner = Refiner(metric(), RES, "cpu", RefineConfig(max_gradient_steps=3, max_mcmc_iterations=3, seed=seed))
    result = refiner.refine(graph, start, target, seed=0, budget_s=BIG_BUDGET)
    assert result.reward >= result.start_reward
    best = [r for _, r, _ in result.history]
    assert best == sorted(best), "the best reward in the history must never go down"
    assert result.gradient_steps == 3 and result.mcmc_iterations == 3
    plan = Plan(graph)
    plan.stack([result.params])  # every value is valid (in range, right kind)
    rescored = refiner.score(plan, [result.params], metric().describe(target), 0)[0]
    assert rescored == pytest.approx(result.reward, abs=1e-5)


def test_refine_returns_the_start_when_nothing_beats_it():
    graph = load_library_graph("red_plastic")
    target = _target(graph)
    start = _random_start(graph, 3)
    zero = Refiner(metric(), RES, "cpu").refine(graph, start, target, budget_s=0.0)
    assert zero.params == start  # the start, every predicted parameter, untouched
    assert zero.reward == zero.start_reward and not zero.improved and zero.gradient_steps == 0
    # Adam steps far too large to help: whatever they do, the start comes back unless a step beat it
    wild = Refiner(metric(), RES, "cpu", RefineConfig(lr=50.0, max_gradient_steps=2, max_mcmc_iterations=0))
    result = wild.refine(graph, start, target, budget_s=BIG_BUDGET)
    assert result.reward >= result.start_reward
    if not result.improved:
        assert result.params == zero.params


def test_gradient_pass_moves_a_wrong_colour_toward_the_target():
    graph = load_library_graph("red_plastic")
    target = _target(graph)
    start: dict = {}
    for n, s in predicted_parameters(graph):
        start.setdefault(n, {})[s.name] = graph.nodes[n].params[s.name]
    start["uniform_color_9"]["color"] = [0.1, 0.4, 0.6]  # blue plastic for a red target
    refiner = Refiner(metric(), RES, "cpu", RefineConfig(max_gradient_steps=12, max_mcmc_iterations=0, lr=0.05))
    result = refiner.refine(graph, start, target, budget_s=BIG_BUDGET)
    assert result.improved and result.reward > result.start_reward + 0.01
    red, green, blue = result.params["uniform_color_9"]["color"]
    assert red > 0.1 and blue < 0.6, "the colour must move toward the target's red"


def test_mcmc_pass_searches_the_discrete_parameters():
    graph = parse_graph({"name": "checker_only", "nodes": {
        "checker": {"type": "checker", "params": {"scale": 4, "softness": 0.0}},
        "out": {"type": "output", "inputs": {"basecolor": "checker", "height": "checker"}}}})
    target = _target(graph)
    start = {"checker": {"scale": 12, "softness": 0.0}}
    refiner = Refiner(metric(), RES, "cpu", RefineConfig(max_gradient_steps=0, max_mcmc_iterations=12, seed=0))
    result = refiner.refine(graph, start, target, budget_s=BIG_BUDGET)
    assert result.mcmc_iterations == 12 and result.gradient_steps == 0
    assert result.improved and abs(result.params["checker"]["scale"] - 4) < 8
