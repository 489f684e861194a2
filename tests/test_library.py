"""Graph library, parameter sampling and the degeneracy check."""

import json
import math

import pytest
import torch

from graph_executor.degeneracy import (BLANK, CONSTANT, NON_FINITE, degeneracy_reasons, graph_degeneracy,
                                       is_degenerate)
from graph_executor.errors import GraphError
from graph_executor.executor import Plan
from graph_executor.ir import loads_graph
from graph_executor.library import library_graphs, library_names, load_library_graph, resolve_graph
from graph_executor.render import render_flash
from graph_executor.sampling import SamplingConfig, predicted_parameters, sample_parameters
from graph_executor.schema import ParamKind
from matrl.commands.graphs import compute_stats

NAMES = library_names()


@pytest.fixture(scope="module")
def graphs():
    return library_graphs()


@pytest.mark.parametrize("name", NAMES)
def test_graph_executes_at_64_with_finite_maps_in_range_and_is_not_degenerate(name):
    graph = load_library_graph(name)
    assert graph.name == name and graph.meta.get("description")
    plan = Plan(graph)
    maps = plan.run(plan.stack(), res=64, seed=0)
    for map_name, t in maps.items():
        assert t.shape[-2:] == (64, 64), map_name
        assert torch.isfinite(t).all(), map_name
        assert t.min() >= 0 and t.max() <= 1, map_name
    image = render_flash(maps)
    assert torch.isfinite(image).all()
    assert graph_degeneracy(graph, res=64) == [None]


def test_library_meets_the_size_and_health_thresholds(graphs):
    stats = compute_stats(graphs, draws=4, res=64, seed=0)
    assert stats.graphs >= 48
    assert stats.categories >= 14
    assert stats.median_nodes >= 25
    assert stats.median_predicted_params >= 20
    assert stats.valid_random_fraction >= 0.9


def test_every_graph_uses_the_material_outputs(graphs):
    for graph in graphs.values():
        ports = graph.output_node.inputs
        assert {"basecolor", "normal", "roughness", "height"} <= set(ports), graph.name
        assert graph.output_node.name == "output"


def test_library_graphs_are_fresh_copies_and_round_trip():
    a, b = load_library_graph(NAMES[0]), load_library_graph(NAMES[0])
    node = next(iter(a.nodes))
    a.nodes[node].params["marker"] = 1
    a.meta["marker"] = 1
    assert "marker" not in b.nodes[node].params and "marker" not in b.meta
    assert loads_graph(b.to_json()).to_json() == b.to_json()


def test_unknown_names_and_paths_are_graph_errors(tmp_path):
    with pytest.raises(GraphError, match="unknown library graph 'nope'"):
        load_library_graph("nope")
    with pytest.raises(GraphError, match="does not exist"):
        resolve_graph(tmp_path / "missing.json")
    path = tmp_path / "copy.json"
    path.write_text(load_library_graph(NAMES[0]).to_json())
    assert resolve_graph(path).to_json() == resolve_graph(NAMES[0]).to_json()


# ---------------------------------------------------------------- sampling

def test_sampling_is_deterministic_for_a_seed_and_varies_across_seeds(graphs):
    graph = graphs[NAMES[0]]
    a = sample_parameters(graph, 6, seed=5)
    assert a == sample_parameters(graph, 6, seed=5)
    assert a != sample_parameters(graph, 6, seed=6)
    assert a[:3] == sample_parameters(graph, 3, seed=5)
    assert a[0] != a[1]


def test_samples_cover_predicted_parameters_within_schema_ranges(graphs):
    for graph in list(graphs.values())[:10]:
        draws = sample_parameters(graph, 4, seed=1)
        expected = {(node, spec.name) for node, spec in predicted_parameters(graph)}
        for draw in draws:
            assert {(node, p) for node, params in draw.items() for p in params} == expected
            for node, spec in predicted_parameters(graph):
                spec.check(draw[node][spec.name], node)
        Plan(graph).stack(draws)  # validates every value again


def test_samples_stay_near_authored_values(graphs):
    graph = graphs[NAMES[0]]
    config = SamplingConfig(spread=0.1, floor=0.0, enum_flip=0.0, bool_flip=0.0)
    for draw in sample_parameters(graph, 8, seed=2, config=config):
        for node, spec in predicted_parameters(graph):
            authored, value = graph.nodes[node].params[spec.name], draw[node][spec.name]
            if spec.kind is ParamKind.FLOAT:
                assert abs(value - authored) <= 0.1 * abs(authored) + 1e-9
            elif spec.kind in (ParamKind.ENUM, ParamKind.BOOL):
                assert value == authored


def test_meta_ranges_and_fixed_parameters_are_honoured(graphs):
    data = json.loads(graphs[NAMES[0]].to_json())
    node = next(n for n, raw in data["nodes"].items() if raw["type"] == "levels")
    blend = next(n for n, raw in data["nodes"].items() if raw["type"] == "blend")
    data["meta"]["sampling"] = {"ranges": {f"{node}.gamma": [2.0, 2.5], f"{blend}.mode": ["screen", "add"]},
                                "fixed": [f"{node}.out_high"], "spread": 0.5}
    graph = loads_graph(json.dumps(data))
    draws = sample_parameters(graph, 16, seed=0)
    assert all(2.0 <= d[node]["gamma"] <= 2.5 for d in draws)
    assert {d[blend]["mode"] for d in draws} == {"screen", "add"}
    assert {d[node]["out_high"] for d in draws} == {graph.nodes[node].params["out_high"]}


@pytest.mark.parametrize("sampling, message", [
    ({"ranges": {"ghost.gamma": [0, 1]}}, "missing node"),
    ({"ranges": {"LEVELS.gamma": [3.0, 2.0]}}, "low above high"),
    ({"ranges": {"LEVELS.gamma": [0.0, 2.0]}}, "outside"),
    ({"ranges": {"LEVELS.wobble": [0.0, 2.0]}}, "unknown parameter"),
    ({"fixed": ["LEVELS"]}, "must read 'node.param'"),
    ({"spread": 7}, "must be a number in [0, 1]"),
    ({"jitter": 0.1}, "unknown keys"),
])
def test_bad_sampling_meta_is_a_graph_error(graphs, sampling, message):
    data = json.loads(graphs[NAMES[0]].to_json())
    node = next(n for n, raw in data["nodes"].items() if raw["type"] == "levels")
    data["meta"]["sampling"] = json.loads(json.dumps(sampling).replace("LEVELS", node))
    with pytest.raises(GraphError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sample_parameters(loads_graph(json.dumps(data)), 2, seed=0)


# ---------------------------------------------------------------- degeneracy

def test_degeneracy_reasons_for_images():
    noise = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16), torch.full((3, 16, 16), 0.4),
                          noise, noise.clone().index_fill_(1, torch.tensor([3]), math.nan)])
    assert degeneracy_reasons(images) == [BLANK, BLANK, CONSTANT, None, NON_FINITE]
    assert is_degenerate(images).tolist() == [True, True, True, False, True]
    assert is_degenerate(noise).tolist() == [False]


def test_flat_and_black_materials_are_degenerate(graphs):
    graph = graphs[NAMES[0]]
    out = graph.output_node
    flat = json.loads(graph.to_json())
    flat["nodes"]["flat"] = {"type": "uniform_color", "params": {"color": [0.5, 0.5, 0.5]}}
    flat["nodes"][out.name]["inputs"] = {"basecolor": "flat"}
    assert graph_degeneracy(loads_graph(json.dumps(flat)), res=64) == [CONSTANT]
    black = json.loads(json.dumps(flat))
    black["nodes"]["flat"]["params"]["color"] = [0.0, 0.0, 0.0]
    black["nodes"]["metal"] = {"type": "uniform_gray", "params": {"value": 1.0}}
    black["nodes"][out.name]["inputs"] = {"basecolor": "flat", "metallic": "metal", "normal": out.inputs["normal"].node}
    assert graph_degeneracy(loads_graph(json.dumps(black)), res=64) == [BLANK]
