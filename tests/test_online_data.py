"""Online synthetic data: tensor sampler and codec equal their Python references, batches are a pure
function of (seed, rank, step), held-out structures are never drawn for training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from graph_executor.degeneracy import material_degeneracy, material_ok
from graph_executor.executor import MaterialMaps, Plan
from graph_executor.ir import loads_graph
from graph_executor.library import library_graphs, load_library_graph
from graph_executor.random_graphs import random_graph
from graph_executor.render import render_flash
from graph_executor.sampling import TensorSampler, sample_parameters
from graph_executor.schema import ParamKind
from learner.augment import AugmentConfig
from learner.online_data import HeldOutConfig, OnlineDataConfig, OnlineSyntheticStream, skeleton_key, step_seed
from policy.batching import collate
from policy.tensor_codec import TensorCodec
from policy.tokenizer import GraphTokenizer, Vocabulary


def _ranged_graph():
    """oak_planks with per-graph ranges of every kind (float, int, enum, colour) and fixed parameters."""
    data = json.loads(load_library_graph("oak_planks").to_json())
    kinds = {raw["type"]: name for name, raw in data["nodes"].items()}
    data["meta"]["sampling"] = {
        "ranges": {f"{kinds['levels']}.gamma": [0.5, 2.0], f"{kinds['blend']}.mode": ["screen", "add", "overlay"],
                   f"{kinds['bricks']}.rows": [4, 12],
                   f"{kinds['gradient_map']}.color_0": [[0.1, 0.1, 0.1], [0.4, 0.3, 0.2]]},
        "fixed": [f"{kinds['bricks']}.gap", f"{kinds['wood_rings']}.direction"], "spread": 0.3, "enum_flip": 0.3}
    return loads_graph(json.dumps(data))


def _as_columns(graph, param_sets) -> np.ndarray:
    """Parameter sets -> (n, K) in TensorSampler's column layout (enums as choice indices)."""
    sampler = TensorSampler(graph)
    rows = []
    for params in param_sets:
        row = []
        for node, name, component in sampler.columns:
            spec = graph.nodes[node].spec.param(name)
            value = params[node][name]
            value = value[component] if spec.components > 1 else value
            row.append(spec.choices.index(value) if spec.kind is ParamKind.ENUM else float(value))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (largest gap between the empirical CDFs)."""
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@pytest.mark.parametrize("graph", [_ranged_graph(), load_library_graph("brushed_steel"), random_graph(3)],
                         ids=["ranged", "library", "random"])
def test_tensor_sampler_follows_the_rules_of_sample_parameters(graph):
    n = 1000
    reference = _as_columns(graph, sample_parameters(graph, n, seed=0))
    sampler = TensorSampler(graph)
    drawn = sampler.draw(n, torch.Generator().manual_seed(0)).numpy()
    assert drawn.shape == reference.shape == (n, sampler.num_columns)
    # two-sample KS at n = m = 1000: 0.087 is the 0.1% critical value; a wrong rule moves a column by far more
    worst = max(range(sampler.num_columns), key=lambda k: _ks(drawn[:, k], reference[:, k]))
    assert _ks(drawn[:, worst], reference[:, worst]) < 0.1, sampler.columns[worst]
    for k, (node, name, _) in enumerate(sampler.columns):
        spec = graph.nodes[node].spec.param(name)
        low, high = (0, len(spec.choices) - 1) if spec.kind is ParamKind.ENUM else (spec.low, spec.high)
        assert low <= drawn[:, k].min() and drawn[:, k].max() <= high, (node, name)
        if spec.kind in (ParamKind.INT, ParamKind.ENUM):
            assert np.all(drawn[:, k] == np.round(drawn[:, k])), (node, name)
        if reference[:, k].min() == reference[:, k].max():  # fixed (or a range of one value)
            assert np.all(drawn[:, k] == reference[0, k]), (node, name)


@pytest.mark.parametrize("graph", [_ranged_graph(), load_library_graph("red_bricks"), random_graph(5)],
                         ids=["ranged", "library", "random"])
def test_tensor_codec_equals_the_tokenizer_and_plan_stack(graph):
    tokenizer = GraphTokenizer(graph)
    codec = TensorCodec(tokenizer)
    sampler = TensorSampler(graph)
    values = sampler.draw(32, torch.Generator().manual_seed(1))
    tokens = codec.quantise(values)
    param_sets = []
    for row in values.tolist():
        params: dict = {}
        for (node, name, component), v in zip(sampler.columns, row):
            spec = graph.nodes[node].spec.param(name)
            value = (spec.choices[int(v)] if spec.kind is ParamKind.ENUM else bool(v) if spec.kind is ParamKind.BOOL
                     else int(v) if spec.kind is ParamKind.INT else float(v))
            if spec.components > 1:
                params.setdefault(node, {}).setdefault(name, []).append(value)
            else:
                params.setdefault(node, {})[name] = value
        param_sets.append(params)
    assert torch.equal(tokens, torch.tensor([tokenizer.tokenize(p) for p in param_sets]))
    expected = Plan(graph).stack(tokenizer.detokenize_batch(tokens))
    actual = codec.param_tensors(codec.dequantise(tokens))
    for node, params in expected.items():
        for name, tensor in params.items():
            assert actual[node][name].dtype == tensor.dtype and torch.equal(actual[node][name], tensor), (node, name)
    assert torch.equal(codec.quantise(codec.dequantise(tokens)), tokens)  # bin centres re-quantise to their bin


def test_select_of_unique_structures_equals_per_sample_collate():
    structures = [GraphTokenizer(load_library_graph(n)).structure() for n in ("granite", "red_bricks", "denim")]
    groups = torch.tensor([2, 0, 0, 1, 2, 1])
    rng = torch.Generator().manual_seed(0)
    tokens = [[int(torch.randint(int(m.sum()), (1,), generator=rng)) for m in structures[g].token_masks]
              for g in groups.tolist()]
    slots = max(s.num_slots for s in structures)
    padded = torch.tensor([t + [0] * (slots - len(t)) for t in tokens])
    fast = collate(structures).select(groups).with_tokens(padded)
    slow = collate([structures[g] for g in groups.tolist()], tokens)
    for name in ("node_types", "node_depth", "node_mask", "relations", "slot_node", "slot_param", "slot_component",
                 "slot_mask", "token_masks", "tokens"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name


def test_material_ok_agrees_with_material_degeneracy():
    graph = load_library_graph("granite")
    plan = Plan(graph)
    maps = plan.run(plan.stack(batch=5), res=64, seed=[0, 1, 2, 3, 4])
    flat = lambda v, c=1: torch.full((1, c, 64, 64), v)  # noqa: E731
    parts = {name: [getattr(maps, name)] for name, _ in maps.items()}
    for base, rough, nan in ((0.0, 0.5, False), (0.5, 0.5, False), (0.5, 0.5, True)):  # black, constant, NaN
        parts["basecolor"].append(flat(float("nan") if nan else base, 3))
        parts["normal"].append(flat(0.5, 3))
        parts["roughness"].append(flat(rough))
        parts["metallic"].append(flat(0.0))
        parts["height"].append(flat(0.5))
    mixed = MaterialMaps(**{k: torch.cat(v) for k, v in parts.items()})
    rendered = render_flash(mixed)
    expected = [r is None for r in material_degeneracy(mixed, rendered)]
    assert material_ok(mixed, rendered).tolist() == expected
    assert expected[:5] == [True] * 5 and expected[5:] == [False] * 3


def _config(**overrides) -> OnlineDataConfig:
    base = dict(res=64, structures_per_chunk=2, random_seeds=(1000, 1030), prefetch_structures=1,
                held_out=HeldOutConfig(library=["oak_planks"], random_seeds=(0, 2)), val_samples_per_structure=4)
    return OnlineDataConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.from_registry()


def test_online_batches_are_a_function_of_seed_rank_and_step(vocab):
    config = _config()
    first = OnlineSyntheticStream(config, vocab, batch_size=8, seed=7)
    again = OnlineSyntheticStream(config, vocab, batch_size=8, seed=7)
    other_rank = OnlineSyntheticStream(config, vocab, batch_size=8, seed=7, rank=1, world_size=2)
    try:
        later = first.batch(5)  # out of order: a batch does not depend on the batches made before it
        a, b = first.batch(3), again.batch(3)
        assert a.size == 8 and a.images.shape == (8, 3, 64, 64) and a.image_tokens is None
        assert torch.equal(a.images, b.images) and torch.equal(a.policy.tokens, b.policy.tokens)
        assert a.keys == b.keys
        assert not torch.equal(a.images, later.images)
        assert not torch.equal(a.images, other_rank.batch(3).images)
        assert torch.isfinite(a.images).all() and 0 <= a.images.min() and a.images.max() <= 1
        plain = OnlineSyntheticStream(config.model_copy(update={"augment": AugmentConfig.off()}), vocab,
                                      batch_size=8, seed=7)
        c = plain.batch(3)  # same draws, no augmentation: same structures and tokens, other pixels
        assert c.keys == a.keys and torch.equal(c.policy.tokens, a.policy.tokens)
        assert not torch.equal(c.images, a.images)
        plain.close()
    finally:
        for stream in (first, again, other_rank):
            stream.close()
    seeds = {step_seed(7, 0, 0, 3, 1), step_seed(7, 0, 1, 3, 1), step_seed(7, 0, 0, 4, 1), step_seed(7, 1, 0, 3, 1)}
    assert len(seeds) == 4


def test_a_chunk_is_shuffled_into_batches_that_resume_mid_chunk(vocab):
    config = _config(samples_per_structure=6)  # 2 structures x 6 = 12 samples: 3 batches of 4 per chunk
    stream = OnlineSyntheticStream(config, vocab, batch_size=4, seed=1)
    fresh = OnlineSyntheticStream(config, vocab, batch_size=4, seed=1)
    try:
        assert stream.chunk_steps == 3
        batches = [stream.batch(step) for step in range(3)]
        tokens = torch.cat([torch.nn.functional.pad(b.policy.tokens, (0, 200 - b.policy.tokens.shape[1]))
                            for b in batches])
        assert [b.size for b in batches] == [4, 4, 4] and len({tuple(t.tolist()) for t in tokens}) == 12
        keys = [k for b in batches for k in b.keys]
        chunk_keys = [s.key for s in stream.structures_for(0)]
        assert sorted(keys) == sorted(chunk_keys * 6)  # the chunk's 2 x 6 samples, each exactly once
        assert keys != sorted(keys)  # shuffled across the batches, not structure by structure
        assert sum(b.drawn for b in batches) == pytest.approx(12)
        again = fresh.batch(2)  # resuming in the middle of a chunk makes the chunk again
        assert again.keys == batches[2].keys and torch.equal(again.images, batches[2].images)
        assert set(stream.batch(3).keys) <= {s.key for s in stream.structures_for(1)}
    finally:
        stream.close()
        fresh.close()
    with pytest.raises(ValueError, match="multiple of train.batch_size"):
        OnlineSyntheticStream(_config(samples_per_structure=5), vocab, batch_size=4)


def test_prefetched_batches_equal_batches_made_on_demand(vocab):
    from learner.online_data import BatchPrefetcher

    config = _config()
    stream, reference = (OnlineSyntheticStream(config, vocab, batch_size=4, seed=3) for _ in range(2))
    prefetcher = BatchPrefetcher(stream, start=2, stop=5, chunks=2)
    try:
        for step in (2, 3, 4):
            got, expected = prefetcher.next(step), reference.batch(step)
            assert got.keys == expected.keys and torch.equal(got.images, expected.images)
            assert torch.equal(got.policy.tokens, expected.policy.tokens)
    finally:
        prefetcher.close()

    def broken(step):
        raise RuntimeError(f"no batch {step}")

    stream.batch = broken
    failing = BatchPrefetcher(stream, start=0, stop=3)
    with pytest.raises(RuntimeError, match="no batch 0"):
        failing.next(0)
    failing.close()
    for s in (stream, reference):
        s.close()


def test_held_out_structures_never_appear_in_training(vocab):
    # oak_planks is held out by name; walnut_planks and wood_laminate share its skeleton (same recipe),
    # so they must never be drawn either
    twins = {name for name, g in library_graphs().items()
             if skeleton_key(g) == skeleton_key(load_library_graph("oak_planks"))}
    assert {"walnut_planks", "wood_laminate"} <= twins
    stream = OnlineSyntheticStream(_config(library_weight=0.9), vocab, batch_size=8, seed=0)
    try:
        pool = stream.pool
        held_keys = {s.skeleton for s in pool.held_out}
        held_hashes = {s.graph.structure_hash() for s in pool.held_out}
        assert len(pool.held_out) == 3 and not twins & set(pool.library)
        drawn = set()
        for step in range(400):
            for s in stream.structures_for(step):
                assert s.skeleton not in held_keys and s.graph.structure_hash() not in held_hashes, s.key
                drawn.add(s.key)
        for step in range(3):
            assert not {k for k in stream.batch(step).keys} & set(pool.held_out_keys)
        library_drawn = {k[1] for k in drawn if k[0] == "library"}
        assert len(library_drawn) >= 40 and not library_drawn & twins  # the rest of the library is drawn
        assert all(1000 <= k[1] < 1030 for k in drawn if k[0] == "random")
        validation = stream.validation_batches()
        assert [set(b.keys) for b in validation] == [{k} for k in pool.held_out_keys]
    finally:
        stream.close()
    unheld = OnlineSyntheticStream(_config(held_out=HeldOutConfig(random_seeds=(0, 1))), vocab, batch_size=8)
    assert twins <= set(unheld.pool.library)  # without the held-out name they are training structures
    unheld.close()


@pytest.mark.parametrize("overrides, message", [
    ({"held_out": HeldOutConfig(library=["no_such_graph"])}, "not in the library"),
    ({"random_seeds": (0, 100), "held_out": HeldOutConfig(random_seeds=(50, 60))}, "overlaps"),
    ({"res": 100}, "res 100"),
    ({"library": ["granite"], "held_out": HeldOutConfig(library=["granite"])}, "every library graph"),
])
def test_bad_online_configs_name_the_culprit(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)
