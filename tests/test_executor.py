"""Executor: determinism, batch == single runs, intermediate lifetimes, renderer, devices."""

import pytest
import torch

from graph_executor.executor import SUPPORTED_RES, Plan
from graph_executor.ir import parse_graph
from graph_executor.render import render_flash
from tests.test_ir import BASE


@pytest.fixture(scope="module")
def plan():
    return Plan(parse_graph(BASE))


def test_deterministic_for_a_seed_and_different_across_seeds(plan):
    params = plan.stack(batch=2)
    a = plan.run(params, res=64, seed=3)
    b = plan.run(params, res=64, seed=3)
    c = plan.run(params, res=64, seed=4)
    for (_, x), (_, y), (_, z) in zip(a.items(), b.items(), c.items()):
        assert torch.equal(x, y)
    assert not torch.equal(a.height, c.height)


def test_batch_equals_single_runs(plan):
    sets = [{"noise": {"scale": s, "octaves": o}, "lv": {"gamma": g}}
            for s, o, g in [(2, 1, 0.5), (7, 4, 1.0), (16, 8, 3.0)]]
    seeds = [11, 12, 13]
    batch = plan.run(plan.stack(sets), res=64, seed=seeds)
    for i, s in enumerate(sets):
        single = plan.run(plan.stack([s]), res=64, seed=seeds[i])
        for (name, x), (_, y) in zip(batch.items(), single.items()):
            assert torch.allclose(x[i:i + 1], y, atol=1e-5), name


def test_intermediates_are_released_after_their_last_use(plan):
    released = [key for step in plan.steps for key in step.release]
    assert len(released) == len(set(released))
    consumers = {}
    for i, step in enumerate(plan.steps):
        for src in step.inputs.values():
            consumers[src] = i
    for i, step in enumerate(plan.steps):
        for key in step.release:
            assert consumers[key] == i
    assert ("noise", "out") in plan.steps[[s.name for s in plan.steps].index("output")].release


def test_maps_have_expected_shapes_and_range(plan):
    maps = plan.run(plan.stack(batch=2), res=128)
    shapes = {name: tuple(x.shape) for name, x in maps.items()}
    assert shapes == {"basecolor": (2, 3, 128, 128), "normal": (2, 3, 128, 128), "roughness": (2, 1, 128, 128),
                      "metallic": (2, 1, 128, 128), "height": (2, 1, 128, 128)}
    for _, x in maps.items():
        assert x.min() >= 0 and x.max() <= 1
    assert maps.finite_per_sample().all()


def test_all_supported_resolutions_run():
    small = Plan(parse_graph({"nodes": {"n": {"type": "perlin_fbm", "params": {"octaves": 2}},
                                        "output": {"type": "output", "inputs": {"height": "n"}}}}))
    for res in SUPPORTED_RES:
        assert small.run(small.stack(), res=res).height.shape[-1] == res


def test_flash_render_is_brightest_at_the_centre_and_responds_to_maps(plan):
    maps = plan.run(plan.stack(batch=1), res=64)
    maps.normal = torch.tensor([0.5, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    maps.basecolor = torch.full((1, 3, 64, 64), 0.5)
    maps.roughness = torch.full((1, 1, 64, 64), 0.3)
    img = render_flash(maps)
    assert img.shape == (1, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    centre, corner = img[0, :, 31:33, 31:33].mean(), img[0, :, :2, :2].mean()
    assert centre > corner
    maps.metallic = torch.ones(1, 1, 64, 64)
    assert not torch.allclose(render_flash(maps), img)


@pytest.mark.gpu
def test_cuda_matches_cpu(plan):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    params = plan.stack(batch=4)
    cpu = plan.run(params, res=128, seed=[1, 2, 3, 4])
    gpu = plan.run(plan.stack(batch=4, device="cuda"), res=128, seed=[1, 2, 3, 4], device="cuda")
    for (name, x), (_, y) in zip(cpu.items(), gpu.items()):
        assert torch.allclose(x, y.cpu(), atol=2e-3), name


@pytest.mark.parametrize("basis", ["perlin", "value_noise"])
def test_dense_and_sparse_lattice_paths_agree(basis):
    """Both evaluation strategies of lattice noise compute the same function (each is used by size)."""
    from graph_executor.executor import NodeContext
    from graph_executor.nodes import _common

    fn = getattr(_common, basis)
    ctx = NodeContext(64, 2, torch.device("cpu"), torch.tensor([1, 2]), {})
    small, large = torch.tensor([3, 16]), torch.tensor([3, 32])
    assert _common._dense_is_faster(ctx, small) and not _common._dense_is_faster(ctx, large)
    dense_part = fn(ctx, small, ctx.seed)
    sparse_all = fn(ctx, large, ctx.seed)
    assert torch.allclose(dense_part[0], sparse_all[0], atol=1e-5)


def test_a_failing_node_function_is_reported_as_graph_error_naming_the_node(monkeypatch):
    from graph_executor.schema import NODE_TYPES

    graph = parse_graph(BASE)
    spec = NODE_TYPES["levels"]

    def broken(ctx, inputs, p):
        raise RuntimeError("boom")

    monkeypatch.setitem(NODE_TYPES, "levels", type(spec)(**{**spec.__dict__, "fn": broken}))
    plan = Plan(graph)
    with pytest.raises(Exception) as info:
        plan.run(plan.stack(), res=64)
    from graph_executor.errors import GraphError
    assert isinstance(info.value, GraphError) and info.value.node == "lv" and "boom" in str(info.value)


def test_batch_size_comes_from_any_parameter_even_when_the_first_node_has_none():
    graph = parse_graph({"nodes": {"inv": {"type": "invert", "inputs": {"in": "n"}},
                                   "n": {"type": "perlin_fbm"},
                                   "output": {"type": "output", "inputs": {"height": "inv"}}}})
    plan = Plan(graph)
    assert plan.steps[0].spec.params == () or plan.steps[0].name == "n"
    maps = plan.run(plan.stack(batch=3), res=64, seed=[1, 2, 3])
    assert maps.height.shape[0] == 3


@pytest.mark.parametrize("basis", ["perlin", "value_noise"])
def test_fbm_as_one_matmul_equals_the_octave_by_octave_sum(basis):
    """Dense octaves are folded into one product of concatenated factors; sparse ones are added."""
    from graph_executor.executor import NodeContext
    from graph_executor.nodes import _common

    fn = getattr(_common, basis)
    ctx = NodeContext(64, 3, torch.device("cpu"), torch.tensor([1, 2, 3]), {})
    scale, octaves = torch.tensor([2, 3, 5]), torch.tensor([4, 2, 3])  # periods up to 20 > 64/4: mixed paths
    persistence, lacunarity = torch.tensor([0.5, 0.7, 0.3]), torch.tensor([2.0, 1.5, 2.0])
    seed, gain, bias = torch.tensor([7, 8, 9]), torch.tensor([0.5, 2.0, -1.0]), torch.tensor([0.1, 0.0, 0.3])
    got = _common.fbm(ctx, fn, scale, octaves, persistence, lacunarity, seed, gain=gain, bias=bias)
    expected = torch.zeros(3, 1, 64, 64)
    for b in range(3):
        sample = NodeContext(64, 1, torch.device("cpu"), ctx.seed[b:b + 1], {})
        amps = [float(persistence[b]) ** o for o in range(int(octaves[b]))]
        for o, amp in enumerate(amps):
            period = _common.octave_period(scale[b:b + 1], lacunarity[b:b + 1], o, 64)
            octave_seed = _common.hash_u32(seed[b:b + 1], torch.tensor([o]))
            expected[b] += fn(sample, period, octave_seed)[0] * amp / sum(amps)
        expected[b] = expected[b] * gain[b] + bias[b]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_compiled_node_functions_and_renderer_match_eager():
    """torch.compile (inductor, CPU here) gives the eager results; minutes on 2 cores, hence slow."""
    from graph_executor.compiled import compiled
    from graph_executor.library import load_library_graph

    from graph_executor.sampling import sample_parameters

    graph = load_library_graph("brown_leather")
    plan = Plan(graph)
    params = plan.stack(sample_parameters(graph, 3, 4))  # mixed worley scales, blend modes: branch-free paths
    eager = plan.run(params, res=64, seed=[3, 4, 5])
    fused = plan.run(params, res=64, seed=[3, 4, 5], compile=True)
    for (name, x), (_, y) in zip(eager.items(), fused.items()):
        assert torch.allclose(x, y, atol=1e-4), name
    assert torch.allclose(compiled(render_flash)(fused), render_flash(eager), atol=1e-4)


@pytest.mark.gpu
def test_compiled_matches_eager_on_cuda(plan):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    params = plan.stack(batch=4, device="cuda")
    eager = plan.run(params, res=128, seed=[1, 2, 3, 4], device="cuda")
    fused = plan.run(params, res=128, seed=[1, 2, 3, 4], device="cuda", compile=True)
    for (name, x), (_, y) in zip(eager.items(), fused.items()):
        assert torch.allclose(x, y, atol=1e-3), name
