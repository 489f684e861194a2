"""Property-based fuzzing: random graphs and parameters either run cleanly or raise GraphError only."""

import copy

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_executor.errors import GraphError
from graph_executor.executor import Plan
from graph_executor.ir import loads_graph, parse_graph
from graph_executor.registry import load_node_library
from tests.test_ir import BASE

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def run_or_graph_error(data) -> None:
    """The only acceptable failure is GraphError; anything that parses must execute to finite maps."""
    try:
        graph = parse_graph(data) if not isinstance(data, str) else loads_graph(data)
    except GraphError:
        return
    plan = Plan(graph)
    maps = plan.run(plan.stack(), res=64)
    assert maps.finite_per_sample().all()


@FUZZ
@given(node=st.sampled_from(sorted(BASE["nodes"])), param=st.text(max_size=12) | st.sampled_from(
    ["scale", "octaves", "persistence", "gamma", "in_low", "intensity", "seed"]), value=json_values)
def test_random_parameter_values(node, param, value):
    data = copy.deepcopy(BASE)
    data["nodes"][node].setdefault("params", {})[param] = value
    run_or_graph_error(data)


@FUZZ
@given(data=st.data())
def test_random_structure_mutations(data):
    graph = copy.deepcopy(BASE)
    names = sorted(graph["nodes"])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["delete", "retype", "rewire", "junk", "add"]))
        target = data.draw(st.sampled_from(names))
        if target not in graph["nodes"]:
            continue
        if action == "delete":
            del graph["nodes"][target]
        elif action == "retype":
            graph["nodes"][target]["type"] = data.draw(st.sampled_from(sorted(load_node_library())) | st.text(max_size=6))
        elif action == "rewire":
            port = data.draw(st.sampled_from(["in", "height", "basecolor", "foreground", "x"]))
            src = data.draw(st.sampled_from(names + ["nowhere"]))
            if not isinstance(graph["nodes"][target].get("inputs"), dict):  # an earlier "junk" may have replaced it
                graph["nodes"][target]["inputs"] = {}
            graph["nodes"][target]["inputs"][port] = data.draw(
                st.sampled_from([src, f"{src}.out", f"{src}.zz"]) | json_values)
        elif action == "junk":
            graph["nodes"][target][data.draw(st.sampled_from(["inputs", "params", "type"]))] = data.draw(json_values)
        else:
            graph["nodes"][data.draw(st.text(max_size=6))] = {"type": data.draw(st.sampled_from(sorted(load_node_library())))}
    run_or_graph_error(graph)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_random_bytes_are_rejected_cleanly(blob):
    try:
        loads_graph(blob)
    except GraphError:
        pass


@FUZZ
@given(overrides=st.lists(st.dictionaries(st.sampled_from(["noise", "lv", "nrm"]), st.dictionaries(
    st.sampled_from(["scale", "octaves", "gamma", "in_low", "intensity", "persistence"]),
    st.floats(allow_nan=True) | st.integers(-5, 50)), max_size=2), min_size=1, max_size=3))
def test_random_batched_overrides(overrides):
    plan = Plan(parse_graph(BASE))
    try:
        params = plan.stack(overrides)
    except GraphError as err:
        assert err.node is not None
        return
    maps = plan.run(params, res=64, seed=list(range(len(overrides))))
    assert all(torch.isfinite(x).all() for _, x in maps.items())

