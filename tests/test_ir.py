"""Validation: every kind of bad graph raises GraphError naming the culprit node and parameter."""

import copy
import json

import pytest

from graph_executor.errors import GraphError
from graph_executor.executor import Plan, execute
from graph_executor.ir import MAX_JSON_BYTES, MAX_NODES, loads_graph, parse_graph

BASE = {
    "name": "t", "category": "test",
    "nodes": {
        "noise": {"type": "perlin_fbm", "params": {"scale": 4, "octaves": 3}},
        "lv": {"type": "levels", "inputs": {"in": "noise"}, "params": {"gamma": 1.5}},
        "nrm": {"type": "normal_from_height", "inputs": {"height": "noise"}},
        "output": {"type": "output", "inputs": {"basecolor": "lv", "normal": "nrm", "height": "noise"}},
    },
}


def bad(mutate):
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(GraphError) as info:
        parse_graph(data)
    return info.value


def test_valid_graph_round_trips_through_json():
    g = parse_graph(BASE)
    again = loads_graph(g.to_json())
    assert again.to_dict() == g.to_dict()
    assert again.structure_hash() == g.structure_hash()
    assert list(g.nodes)[-1] == "output" and list(g.nodes)[0] == "noise"


def test_structure_hash_ignores_params_but_not_wiring():
    g = parse_graph(BASE)
    assert g.with_params({"lv": {"gamma": 2.0}}).structure_hash() == g.structure_hash()
    data = copy.deepcopy(BASE)
    data["nodes"]["output"]["inputs"]["roughness"] = "lv"
    assert parse_graph(data).structure_hash() != g.structure_hash()


def test_unknown_node_type():
    err = bad(lambda d: d["nodes"]["lv"].update(type="levelz"))
    assert err.node == "lv" and "unknown node type 'levelz'" in str(err)


def test_cycle():
    def make_cycle(d):
        d["nodes"]["noise"] = {"type": "levels", "inputs": {"in": "lv"}}
    err = bad(make_cycle)
    assert "cycle" in str(err) and err.node in {"noise", "lv"}


def test_dangling_input_and_unknown_port():
    err = bad(lambda d: d["nodes"]["lv"]["inputs"].update({"in": "ghost"}))
    assert err.node == "lv" and "ghost" in str(err) and "dangling" in str(err)
    err = bad(lambda d: d["nodes"]["lv"]["inputs"].update({"in": "noise.nope"}))
    assert "noise.nope" in str(err)
    err = bad(lambda d: d["nodes"]["lv"]["inputs"].update({"bogus": "noise"}))
    assert err.node == "lv" and "bogus" in str(err)


def test_missing_required_input():
    err = bad(lambda d: d["nodes"]["lv"].update(inputs={}))
    assert err.node == "lv" and "'in'" in str(err) and "missing" in str(err)


def test_wrong_kind():
    err = bad(lambda d: d["nodes"]["noise"]["params"].update(octaves=2.5))
    assert (err.node, err.param) == ("noise", "octaves") and "expected int" in str(err)
    err = bad(lambda d: d["nodes"]["lv"]["params"].update(gamma="high"))
    assert (err.node, err.param) == ("lv", "gamma")
    err = bad(lambda d: d["nodes"]["noise"]["params"].update(octaves=True))
    assert err.param == "octaves"


def test_out_of_range():
    err = bad(lambda d: d["nodes"]["lv"]["params"].update(gamma=99.0))
    assert (err.node, err.param) == ("lv", "gamma") and "outside" in str(err)


def test_nan_and_inf():
    text = json.dumps(BASE).replace('"gamma": 1.5', '"gamma": NaN')
    with pytest.raises(GraphError) as info:
        loads_graph(text)
    assert (info.value.node, info.value.param) == ("lv", "gamma") and "not finite" in str(info.value)
    err = bad(lambda d: d["nodes"]["lv"]["params"].update(gamma=float("inf")))
    assert err.param == "gamma"


def test_nan_override_at_execution_names_node_and_param():
    plan = Plan(parse_graph(BASE))
    with pytest.raises(GraphError) as info:
        plan.stack([{}, {"lv": {"gamma": float("nan")}}])
    assert (info.value.node, info.value.param) == ("lv", "gamma")
    with pytest.raises(GraphError) as info:
        plan.stack([{"lv": {"gammma": 1.0}}])
    assert info.value.param == "gammma"


def test_unknown_parameter():
    err = bad(lambda d: d["nodes"]["lv"]["params"].update(brightness=1.0))
    assert (err.node, err.param) == ("lv", "brightness")


def test_unsupported_resolution():
    with pytest.raises(GraphError, match="unsupported resolution 100"):
        execute(parse_graph(BASE), res=100)
    with pytest.raises(GraphError, match="unsupported resolution 4096"):
        execute(parse_graph(BASE), res=4096)


def test_oversized_graph():
    def grow(d):
        for i in range(MAX_NODES):
            d["nodes"][f"extra{i}"] = {"type": "perlin_fbm"}
    assert "oversized" in str(bad(grow))
    with pytest.raises(GraphError, match="oversized"):
        loads_graph(b" " * (MAX_JSON_BYTES + 1))


def test_output_node_count_and_malformed_json():
    err = bad(lambda d: d["nodes"].pop("output"))
    assert "exactly one 'output'" in str(err)
    with pytest.raises(GraphError, match="malformed JSON"):
        loads_graph("{not json")
    with pytest.raises(GraphError, match="JSON object"):
        parse_graph([1, 2])


def test_bad_node_name_and_shape():
    err = bad(lambda d: d["nodes"].update({"bad name!": {"type": "perlin_fbm"}}))
    assert "identifiers" in str(err)
    err = bad(lambda d: d["nodes"].update({"n2": {"type": "perlin_fbm", "code": "import os"}}))
    assert err.node == "n2" and "unknown keys" in str(err)
