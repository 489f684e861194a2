"""JSON and YAML from a user: deep nesting, integers of thousands of digits and oversized text are
the one clean error of each entry point (GraphError, PayloadError, ConfigError; one line and exit 2
in the CLI), never a RecursionError or Python's integer-digit ValueError."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from graph_executor.errors import GraphError
from graph_executor.ir import MAX_JSON_BYTES, loads_graph
from graph_executor.library import library_names
from learner.pretrain import PretrainConfig
from matrl.cli import main
from matrl.config import ConfigError, load_config, parse_override
from reward_service.arrow_codec import PayloadError, decode_request
from tests.test_cli_graphs import GRAPH

DEEP = "[" * 100_000 + "]" * 100_000      # far past Python's recursion limit
HUGE_INT = "9" * 5000                     # past Python's 4300-digit int(str) limit
MAX_DEPTH = 32                            # graph_executor.safe_json.MAX_DEPTH


def test_loads_json_limits_depth_digits_and_bytes():
    from graph_executor import safe_json
    from graph_executor.safe_json import MAX_INT_DIGITS, JSONInputError, loads_json

    assert safe_json.MAX_DEPTH == MAX_DEPTH
    assert loads_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert loads_json('{"a": ' + "9" * MAX_INT_DIGITS + "}")["a"] == int("9" * MAX_INT_DIGITS)
    assert loads_json('"' + "[" * 10_000 + '"') == "[" * 10_000  # brackets inside strings are text
    assert loads_json('"\\"[[["') == '"[[['
    for text, culprit in [(DEEP, "nested deeper than"), ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "deeper"),
                          ('{"a": [1, ' + HUGE_INT + "]}", "5000 digits"),
                          ('{"a": -' + "1" * (MAX_INT_DIGITS + 1) + "}", "digits"),
                          ("{not json", "malformed JSON"), (b"\xff\xfe{}", "not UTF-8")]:
        with pytest.raises(JSONInputError, match=culprit):
            loads_json(text, what="test input")
    # the cap counts UTF-8 bytes, not characters: 'é' is two bytes
    text = json.dumps({"name": "é" * (MAX_JSON_BYTES // 2 + 8)}, ensure_ascii=False)
    assert len(text) < MAX_JSON_BYTES < len(text.encode())
    for given in (text, text.encode()):
        with pytest.raises(JSONInputError, match="bytes"):
            loads_json(given, max_bytes=MAX_JSON_BYTES)


@pytest.mark.parametrize("text, culprit", [
    ('{"meta": {"x": ' + DEEP + '}, "nodes": {}}', "nested deeper"),
    (json.dumps(GRAPH).replace('"gamma": 1.2', '"gamma": ' + HUGE_INT), "digits"),
    (json.dumps({**GRAPH, "meta": {"description": "é" * (MAX_JSON_BYTES // 2 + 8)}}, ensure_ascii=False),
     "oversized"),
], ids=["deep", "huge-int", "multibyte-oversized"])
def test_graph_json_limits_are_graph_errors(text, culprit):
    with pytest.raises(GraphError, match=culprit):
        loads_graph(text)


def _params_payload(params: str) -> bytes:
    table = pa.table({"sample_id": pa.array([0], pa.int64()), "graph_id": [library_names()[0]],
                      "params": [params], "seed": pa.array([0], pa.int64()), "target_key": ["photo/a"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("params", ['{"n": {"p": ' + DEEP + "}}", '{"n": {"p": ' + HUGE_INT + "}}"],
                         ids=["deep", "huge-int"])
def test_params_column_limits_are_payload_errors(params):
    with pytest.raises(PayloadError, match="column 'params', row 0"):
        decode_request(_params_payload(params))


@pytest.fixture
def graph_file(tmp_path):
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(GRAPH))
    return path


@pytest.mark.parametrize("value", [DEEP, HUGE_INT, "[" + HUGE_INT + "]"], ids=["deep", "huge-int", "huge-int-list"])
def test_render_set_value_limits_are_one_line_errors(graph_file, tmp_path, capsys, value):
    code = main(["render", str(graph_file), "--res", "64", "-o", str(tmp_path / "x"), "--set", f"lv.gamma={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "lv.gamma" in err and len(err.strip().splitlines()) == 1 and len(err) < 400
    assert not (tmp_path / "x").exists()


def test_graphs_validate_checks_every_file_and_reports_each_failure(graph_file, tmp_path, capsys):
    deep, huge = tmp_path / "deep.json", tmp_path / "huge.json"
    deep.write_text('{"meta": ' + DEEP + "}")
    huge.write_text(json.dumps(GRAPH).replace('"gamma": 1.2', '"gamma": ' + HUGE_INT))
    code = main(["graphs", "validate", str(deep), str(huge), str(graph_file), str(tmp_path / "absent.json")])
    captured = capsys.readouterr()
    assert code == 1
    fails = [line for line in captured.err.splitlines() if line.startswith("FAIL")]
    assert [line.split()[1].rstrip(":") for line in fails] == [str(deep), str(huge), str(tmp_path / "absent.json")]
    assert "nested deeper" in fails[0] and "digits" in fails[1]
    assert f"ok   {graph_file}" in captured.out


@pytest.mark.parametrize("override, culprit", [
    ("train.seed=" + "9" * 4000, "train.seed"),            # YAML reads it as an int; it would break torch
    ("train.epochs=" + "9" * 30, "train.epochs"),
    ("optim.lr=.inf", "optim.lr"),
    ("train.epochs=" + "[" * 2000 + "]" * 2000, "train.epochs"),
    ("model.dim=" + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "model.dim"),
], ids=["huge-seed", "int-beyond-64-bits", "inf", "deep", "deeper-than-limit"])
def test_config_set_values_beyond_the_limits_are_config_errors(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")) as info:
        load_config(PretrainConfig, "pretrain", "tiny", [override])
    assert len(str(info.value)) < 400


def test_config_file_limits(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  seed: " + "9" * 400 + "\n")
    with pytest.raises(ConfigError, match=r"train\.seed"):
        load_config(PretrainConfig, "pretrain", str(path))
    path.write_text("train: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(PretrainConfig, "pretrain", str(path))
    assert parse_override("a.b=12") == ("a.b", 12)
