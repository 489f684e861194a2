"""The reward service's wire format: generated gRPC modules and the Arrow IPC codec (no Ray, no server)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from reward_service.arrow_codec import (REQUEST_SCHEMA, RESPONSE_SCHEMA, PayloadError, decode_request,
                                        decode_response, encode_request, encode_response)
from reward_service.proto import codegen
from reward_service.worker import ScoreRequest, ScoreResult

GRAPH = json.dumps({"format": "matrl.graph/1", "name": "t", "nodes": {
    "noise": {"type": "perlin_fbm", "params": {"scale": 4}},
    "out": {"type": "output", "inputs": {"height": "noise"}}}})


def _png(side: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _payload(columns: dict) -> bytes:
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_generated_modules_match_the_proto_byte_for_byte(tmp_path):
    pytest.importorskip("grpc_tools")
    for path in codegen.generate(tmp_path):
        committed = codegen.PACKAGE_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python -m reward_service.proto.codegen`")


def test_generated_modules_import_by_package_path_and_declare_the_service():
    from reward_service.proto import reward_pb2, reward_pb2_grpc

    service = reward_pb2.DESCRIPTOR.services_by_name["RewardService"]
    assert service.full_name == "matrl.reward.v1.RewardService"
    assert {m.name for m in service.methods} == {"Score", "ScoreStream", "PutTarget", "DeleteTarget",
                                                        "ListGraphs", "DescribeGraph", "Resize", "GetPoolStatus"}
    stream = service.methods_by_name["ScoreStream"]
    assert stream.client_streaming and stream.server_streaming
    assert hasattr(reward_pb2_grpc, "RewardServiceStub")
    assert "from reward_service.proto import reward_pb2" in (codegen.PACKAGE_DIR / "reward_pb2_grpc.py").read_text()


def test_request_round_trip_groups_rows_and_sends_a_shared_target_once():
    image = _png()
    requests = [
        ScoreRequest(structure=GRAPH, seeds=list(range(64)), target=image,
                     param_sets=[{"noise": {"persistence": 0.1 + i / 100}} for i in range(64)]),
        ScoreRequest(structure="lib:red_bricks", seeds=[7, 8], target="photo/1", tokens=[[1, 2], [3, 4]]),
        ScoreRequest(structure=GRAPH, seeds=[5], target=image, param_sets=[{"noise": {"persistence": math.nan}}]),
    ]
    payload = encode_request(requests, first_sample_id=100)
    table = pa.ipc.open_stream(payload).read_all()
    assert table.schema.equals(REQUEST_SCHEMA)
    assert len(table.column("target_image").chunk(0).dictionary) == 1
    assert len(table.column("graph_json").chunk(0).dictionary) == 1

    decoded = decode_request(payload)
    assert decoded.sample_ids == list(range(100, 167))
    assert len(decoded.groups) == 2
    by_graph = {g.structure: g for g in decoded.groups}
    shared = by_graph[GRAPH]
    assert shared.rows == list(range(64)) + [66] and shared.target == image and shared.tokens is None
    assert math.isnan(shared.param_sets[-1]["noise"]["persistence"])
    lib = by_graph["lib:red_bricks"]
    assert (lib.graph_id, lib.target_key, lib.tokens, lib.param_sets, lib.seeds) == (
        "red_bricks", "photo/1", [[1, 2], [3, 4]], None, [7, 8])
    chunks = shared.chunks(30)
    assert [len(c.rows) for c in chunks] == [30, 30, 5]
    assert chunks[2].to_request("r", 1.5).seeds == [60, 61, 62, 63, 5]


def test_array_targets_are_png_encoded_and_decode_back():
    pixels = (np.arange(16 * 16 * 3) % 256).astype(np.uint8).reshape(16, 16, 3)
    decoded = decode_request(encode_request([ScoreRequest(structure=GRAPH, seeds=[1], target=pixels,
                                                          param_sets=[{}])]))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(decoded.groups[0].target))), pixels)


def test_plain_columns_without_dictionary_encoding_are_accepted():
    payload = _payload({"sample_id": pa.array([1, 2], pa.int32()), "seed": [3, 4],
                        "graph_json": [GRAPH, GRAPH], "target_image": pa.array([_png(), _png()], pa.binary())})
    decoded = decode_request(payload)
    assert len(decoded.groups) == 1 and decoded.groups[0].param_sets == [{}, {}]


def test_response_round_trip():
    results = [ScoreResult(0.25, {"gram": 0.1, "lab": 2.0}, True, "", {"total": 0.01}),
               ScoreResult(-1.0, {}, False, "node 'noise', parameter 'persistence': value nan is not finite")]
    payload = encode_response([10, 11], results)
    assert pa.ipc.open_stream(payload).read_all().schema.equals(RESPONSE_SCHEMA)
    ids, back = decode_response(payload)
    assert ids == [10, 11] and back == results


BASE = {"sample_id": [1], "seed": [2], "graph_json": [GRAPH], "target_key": ["k"]}


@pytest.mark.parametrize("columns, culprit", [
    ({**BASE, "seed": pa.array([None], pa.int64())}, "column 'seed', row 0: null"),
    ({k: v for k, v in BASE.items() if k != "seed"}, "missing column 'seed'"),
    ({**BASE, "seed": ["x"]}, "column 'seed' has type string"),
    ({**BASE, "colour": [1]}, "unknown column(s) ['colour']"),
    ({**BASE, "graph_id": ["red_bricks"]}, "row 0: both 'graph_json' and 'graph_id'"),
    ({k: v for k, v in BASE.items() if k != "target_key"}, "row 0: neither 'target_image' nor 'target_key'"),
    ({**BASE, "params": ["{not json"]}, "column 'params', row 0: malformed JSON"),
    ({**BASE, "params": ["[1, 2]"]}, "column 'params', row 0: expected a JSON object"),
    ({**BASE, "params": ['{"n": 1}'], "tokens": [[1]]}, "row 0: both 'params' and 'tokens'"),
    ({**BASE, "tokens": pa.array([["a"]])}, "column 'tokens' has type list<item: string>"),
    ({k: v[:0] for k, v in BASE.items()}, "no rows"),
])
def test_malformed_columns_name_the_culprit(columns, culprit):
    with pytest.raises(PayloadError) as err:
        decode_request(_payload(columns))
    assert culprit in str(err.value)


@pytest.mark.parametrize("payload", [b"", b"\x00\x01 not arrow at all", None])
def test_malformed_arrow_bytes_are_a_payload_error(payload):
    if payload is None:
        good = encode_request([ScoreRequest(structure=GRAPH, seeds=[1], target="k", param_sets=[{}])])
        payload = good[: len(good) // 2]
    with pytest.raises(PayloadError, match="request: (empty Arrow payload|malformed Arrow IPC stream)"):
        decode_request(payload)
