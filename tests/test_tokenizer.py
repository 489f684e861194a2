"""Graph linearisation and parameter tokens: round trips, masks, vocabulary, structure tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_executor.errors import GraphError
from graph_executor.executor import Plan
from graph_executor.ir import parse_graph
from graph_executor.schema import P, ParamKind
from graph_executor.registry import load_node_library
from policy.tokenizer import (REL_ANCESTOR, REL_CONSUMER, REL_DESCENDANT, REL_INPUT, REL_SELF, REL_UNRELATED,
                              VALUE_BINS, GraphTokenizer, Vocabulary, dequantise, quantise, valid_token_count)


def small_graph():
    return parse_graph({"name": "small", "nodes": {
        "n1": {"type": "perlin_fbm"},
        "n2": {"type": "perlin_fbm", "params": {"scale": 9}},
        "mix": {"type": "blend", "inputs": {"foreground": "n1", "background": "n2"}},
        "lv": {"type": "levels", "inputs": {"in": "mix"}},
        "out": {"type": "output", "inputs": {"roughness": "mix", "height": "lv"}},
    }})


def every_type_graph():
    """One node of every registered type, inputs fed by a generator, so every schema is covered."""
    registry = load_node_library()
    source = next(t for t, s in sorted(registry.items()) if not (set(s.inputs) - s.optional_inputs)
                  and t != "output")
    nodes = {"src": {"type": source}}
    for t, spec in sorted(registry.items()):
        if t == "output":
            continue
        nodes[f"n_{t}"] = {"type": t, "inputs": {port: "src" for port in spec.inputs}}
    nodes["out"] = {"type": "output", "inputs": {"height": "src"}}
    return parse_graph({"name": "every_type", "nodes": nodes})


# --- per-scalar codec, property-based -------------------------------------------------------

ranges = st.tuples(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3)).map(lambda t: (t[0], t[0] + t[1]))


@given(ranges, st.floats(0, 1))
def test_float_round_trip_within_half_a_bin(bounds, frac):
    low, high = bounds
    spec = P("x", "float", low, low, high)
    x = min(max(low + frac * (high - low), low), high)
    token = quantise(spec, x)
    assert 0 <= token < VALUE_BINS
    half_bin = (high - low) / VALUE_BINS / 2
    assert abs(dequantise(spec, token) - x) <= half_bin * (1 + 1e-9) + 1e-12
    assert quantise(spec, dequantise(spec, token)) == token


@given(st.integers(-500, 500), st.integers(0, 5000), st.data())
def test_int_round_trip(low, span, data):
    spec = P("k", "int", low, low, low + span)
    value = data.draw(st.integers(low, low + span))
    token = quantise(spec, value)
    assert 0 <= token < valid_token_count(spec)
    back = dequantise(spec, token)
    assert isinstance(back, int) and low <= back <= low + span
    count = span + 1
    if count <= VALUE_BINS:
        assert back == value and token == value - low
    else:
        assert abs(back - value) <= count / VALUE_BINS / 2 + 0.5
    assert quantise(spec, back) == token


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=VALUE_BINS, unique=True), st.data())
def test_enum_round_trip_is_exact(choices, data):
    spec = P("e", "enum", choices[0], choices=choices)
    value = data.draw(st.sampled_from(choices))
    assert dequantise(spec, quantise(spec, value)) == value
    assert valid_token_count(spec) == len(choices)


def test_bool_round_trip_is_exact():
    spec = P("b", "bool", False)
    assert [dequantise(spec, quantise(spec, v)) for v in (False, True)] == [False, True]
    assert valid_token_count(spec) == 2


@given(st.sampled_from(["color", "vector"]), st.integers(1, 6), ranges, st.data())
def test_every_valid_token_decodes_to_a_value_the_schema_accepts(kind, size, bounds, data):
    spec = P("v", kind, [bounds[0]] * (3 if kind == "color" else size), bounds[0], bounds[1], size=size)
    token = data.draw(st.integers(0, valid_token_count(spec) - 1))
    value = dequantise(spec, token)
    spec.check([value] * spec.components, "node")
    assert quantise(spec, value) == token


def test_bin_centres():
    spec = P("x", "float", 0.0, 0.0, 1.0)
    assert [dequantise(spec, q) for q in (0, 63, 127)] == [0.5 / 128, 63.5 / 128, 127.5 / 128]
    assert quantise(spec, 1.0) == 127 and quantise(spec, 0.0) == 0


# --- graph level ------------------------------------------------------------------------------

def test_slots_follow_nodes_then_schema_order_and_skip_unpredicted():
    tok = GraphTokenizer(small_graph())
    expected = []
    for name, node in small_graph().nodes.items():
        for spec in node.spec.params:
            if spec.predicted:
                expected += [(name, spec.name, c) for c in range(spec.components)]
    assert [(s.node, s.param, s.component) for s in tok.slots] == expected
    assert all(s.param != "seed" for s in tok.slots)
    assert tok.masks.shape == (len(tok.slots), VALUE_BINS)


def test_node_sequence_depth_edges_and_relations():
    tok = GraphTokenizer(small_graph())
    assert tok.nodes == ["n1", "n2", "mix", "lv", "out"]
    assert tok.node_depth == [0, 0, 1, 2, 3]
    assert [tok.vocab.node_types[i - 1] for i in tok.node_type_ids] == \
        ["perlin_fbm", "perlin_fbm", "blend", "levels", "output"]
    assert {(e.source, e.target, e.target_port) for e in tok.edges} == {
        ("n1", "mix", "foreground"), ("n2", "mix", "background"), ("mix", "lv", "in"),
        ("mix", "out", "roughness"), ("lv", "out", "height")}
    assert tok.edge_index.shape == (2, 5)
    r = tok.relations
    assert r[2, 0] == REL_INPUT and r[0, 2] == REL_CONSUMER
    assert r[3, 0] == REL_ANCESTOR and r[0, 3] == REL_DESCENDANT
    assert r[0, 1] == REL_UNRELATED and all(r[i, i] == REL_SELF for i in range(5))


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_graph_round_trip_over_every_node_type(data):
    graph = every_type_graph()
    tok = GraphTokenizer(graph)
    values = {}
    for name, node in graph.nodes.items():
        for spec in node.spec.params:
            if spec.predicted:
                values.setdefault(name, {})[spec.name] = data.draw(_values(spec))
    tokens = tok.tokenize(values)
    assert len(tokens) == len(tok.slots)
    assert all(tok.masks[i, t] for i, t in enumerate(tokens))
    decoded = tok.detokenize(tokens)
    for name, params in values.items():
        for pname, value in params.items():
            spec = graph.nodes[name].spec.param(pname)
            back = decoded[name][pname]
            if spec.kind in (ParamKind.ENUM, ParamKind.BOOL):
                assert back == value
            elif spec.kind is ParamKind.INT:
                count = int(spec.high) - int(spec.low) + 1
                assert abs(back - value) <= (0 if count <= VALUE_BINS else count / 256 + 0.5)
            else:
                half = (spec.high - spec.low) / 256 * (1 + 1e-9)
                for a, b in zip(np.atleast_1d(back), np.atleast_1d(value)):
                    assert abs(a - b) <= half
    assert tok.tokenize(decoded) == tokens


def _values(spec):
    if spec.kind is ParamKind.BOOL:
        return st.booleans()
    if spec.kind is ParamKind.ENUM:
        return st.sampled_from(spec.choices)
    if spec.kind is ParamKind.INT:
        return st.integers(math.ceil(spec.low), math.floor(spec.high))
    scalar = st.floats(spec.low, spec.high)
    if spec.kind is ParamKind.FLOAT:
        return scalar
    return st.lists(scalar, min_size=spec.components, max_size=spec.components)


def test_masks_admit_exactly_the_decodable_tokens():
    graph = every_type_graph()
    tok = GraphTokenizer(graph)
    tokens = np.array(tok.tokenize())
    for slot in tok.slots:
        admitted = tok.masks[slot.index].nonzero().flatten().tolist()
        assert admitted == list(range(slot.valid_tokens))
        for token in admitted:  # every admitted token is a value the schema accepts
            value = dequantise(slot.spec, token)
            multi = slot.spec.kind in (ParamKind.COLOR, ParamKind.VECTOR)
            slot.spec.check([value] * slot.spec.components if multi else value, slot.node)
        if slot.valid_tokens < VALUE_BINS:
            bad = tokens.copy()
            bad[slot.index] = slot.valid_tokens
            with pytest.raises(GraphError, match=f"node '{slot.node}', parameter '{slot.param}'"):
                tok.detokenize(bad)
    extremes = np.stack([np.zeros(len(tok.slots), dtype=np.int64), tok.masks.sum(1).numpy() - 1])
    Plan(graph).stack(tok.detokenize_batch(extremes))  # the executor accepts the decoded sets


def test_detokenize_batch_matches_single_rows():
    tok = GraphTokenizer(every_type_graph())
    rng = np.random.default_rng(0)
    batch = np.stack([rng.integers(0, tok.masks.sum(1).numpy()) for _ in range(5)])
    assert tok.detokenize_batch(batch) == [tok.detokenize(row) for row in batch]


def test_param_columns_stack_exactly_like_detokenized_parameter_sets():
    """The worker's fast path (tokens -> columns -> tensors) equals detokenize + Plan.stack on every
    node type's parameters (bool, int, enum, float, colour, vector), token extremes included."""
    graph = every_type_graph()
    tok, plan = GraphTokenizer(graph), Plan(graph)
    rng = np.random.default_rng(1)
    valid = tok.masks.sum(1).numpy()
    batch = np.concatenate([np.zeros((1, len(valid)), np.int64), valid[None] - 1,
                            np.stack([rng.integers(0, valid) for _ in range(30)])])
    slow = plan.stack(tok.detokenize_batch(batch))
    fast = plan.stack_columns(tok.param_columns(batch), len(batch))
    assert slow.keys() == fast.keys()
    for node in slow:
        for name, tensor in slow[node].items():
            assert fast[node][name].dtype == tensor.dtype and torch.equal(fast[node][name], tensor), (node, name)
    assert tok.invalid_rows(batch).tolist() == [False] * len(batch)
    broken = batch[:3].copy()
    broken[1, 0] = -1
    broken[2, -1] = 999
    assert tok.invalid_rows(broken).tolist() == [False, True, True]
    with pytest.raises(GraphError, match="token -1"):
        tok.param_columns(broken)


def test_stack_columns_checks_columns_and_names_the_culprit():
    plan = Plan(small_graph())
    good = {"n1": {"scale": np.array([3, 4]), "persistence": np.array([0.5, 0.6])}, "mix": {"mode": np.array([0, 2])}}
    stacked = plan.stack_columns(good, 2)
    reference = plan.stack([{"n1": {"scale": 3, "persistence": 0.5}, "mix": {"mode": "copy"}},
                            {"n1": {"scale": 4, "persistence": 0.6}, "mix": {"mode": "subtract"}}])
    assert all(torch.equal(stacked[n][k], reference[n][k]) for n in reference for k in reference[n])
    for columns, match in [({"n1": {"persistence": np.array([0.5, np.nan])}}, "parameter 'persistence'.*not finite"),
                           ({"n1": {"scale": np.array([3, 1000])}}, "parameter 'scale'.*outside"),
                           ({"mix": {"mode": np.array([0, 99])}}, "parameter 'mode'.*outside"),
                           ({"n1": {"scale": np.array([3.5, 4.0])}}, "parameter 'scale'.*integer"),
                           ({"n1": {"scale": np.array([3])}}, "parameter 'scale'.*shape"),
                           ({"ghost": {"scale": np.array([3, 3])}}, "node 'ghost'")]:
        with pytest.raises(GraphError, match=match):
            plan.stack_columns(columns, 2)


def test_bad_inputs_raise_graph_errors_naming_the_culprit():
    tok = GraphTokenizer(small_graph())
    with pytest.raises(GraphError, match="expected 17 tokens"):
        tok.detokenize([0] * 3)
    with pytest.raises(GraphError, match="node 'ghost'"):
        tok.tokenize({"ghost": {"scale": 3}})
    with pytest.raises(GraphError, match="node 'n1', parameter 'scale'"):
        tok.tokenize({"n1": {"scale": 1000}})
    with pytest.raises(GraphError, match="node 'n1', parameter 'persistence'"):
        tok.tokenize({"n1": {"persistence": float("nan")}})
    with pytest.raises(GraphError, match="token -1"):
        tok.detokenize([-1] + [0] * 16)
    assert tok.tokenize({"n1": {"seed": 7}}) == tok.tokenize()  # seeds are valid but not predicted


def test_vocabulary_is_sorted_stable_and_serialisable():
    vocab = Vocabulary.from_registry()
    assert list(vocab.node_types) == sorted(load_node_library())
    assert Vocabulary.from_registry() == vocab
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    assert vocab.node_type_id(vocab.node_types[0]) == 1  # 0 is padding
    old = Vocabulary(tuple(t for t in vocab.node_types if t != "levels"), vocab.params, vocab.max_components)
    with pytest.raises(GraphError, match="node 'lv'.*'levels' is not in the policy's vocabulary"):
        GraphTokenizer(small_graph(), old)


def test_structure_tensors_agree_with_slots():
    tok = GraphTokenizer(small_graph())
    s = tok.structure()
    assert s.num_nodes == 5 and s.num_slots == len(tok.slots)
    assert s.slot_node.tolist() == [x.node_index for x in tok.slots]
    assert s.slot_param.tolist() == [tok.vocab.param_id(small_graph().nodes[x.node].type, x.param)
                                     for x in tok.slots]
    assert (s.token_masks == tok.masks).all()
