"""The reward service's wire contract (docs/reward_api.md) against a real server on 127.0.0.1:
ListGraphs/DescribeGraph, server reflection, the documented response keys, the docs' examples,
and a Node.js client written from the proto and the docs (examples/node_client) that must get
the same rewards as RewardClient.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from graph_executor.library import library_names, load_library_graph
from reward_service.client import RetryPolicy, RewardClient, RewardServiceError
from reward_service.config import MetricConfig, RewardConfig
from reward_service.pool import PoolConfig, RewardPool
from reward_service.proto import reward_pb2
from reward_service.server import BackgroundServer, ServerConfig
from reward_service.worker import ScoreRequest
from tests.service_helpers import local_ray_service

REPO = Path(__file__).resolve().parents[1]
NODE_CLIENT = REPO / "examples" / "node_client"
TOKEN = "contract-token"
REWARD = RewardConfig(res=64, metric=MetricConfig(image_res=64))
GRAPH_ID = "red_bricks"
PARAMS = [{"bricks_0": {"rows": 8, "offset": 0.25}}, {}, {"bricks_0": {"gap": math.nan}}]


def target_png() -> bytes:
    y, x = np.mgrid[0:64, 0:64]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


TARGET = target_png()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with local_ray_service() as start:
        token = tmp_path_factory.mktemp("auth") / "token"
        token.write_text(TOKEN)
        server = BackgroundServer(RewardPool(REWARD, PoolConfig(workers=1)), ServerConfig(port=0, token_file=token))
        yield start(server)


@pytest.fixture
def client(service):
    with RewardClient(service.address, token=TOKEN, timeout_s=120, retry=RetryPolicy(attempts=1)) as c:
        yield c


def test_list_graphs_is_the_library(client):
    graphs = client.list_graphs()
    assert [g["graph_id"] for g in graphs] == library_names()
    bricks = next(g for g in graphs if g["graph_id"] == GRAPH_ID)
    graph = load_library_graph(GRAPH_ID)
    assert (bricks["category"], bricks["nodes"]) == (graph.category, len(graph.nodes))
    assert bricks["parameters"] == sum(len(n.spec.params) for n in graph.nodes.values())


def test_describe_graph_gives_every_settable_parameter_and_its_value(client):
    described = client.describe_graph(f"lib:{GRAPH_ID}")
    graph = load_library_graph(GRAPH_ID)
    assert [n["name"] for n in described["nodes"]] == list(graph.nodes)
    rows = next(p for p in described["nodes"][0]["parameters"] if p["name"] == "rows")
    assert (rows["kind"], rows["low"], rows["high"], rows["value"], rows["components"]) == ("int", 2, 32, 12, 1)
    blend = next(n for n in described["nodes"] if n["name"] == "blend_5")
    mode = next(p for p in blend["parameters"] if p["name"] == "mode")
    assert mode["kind"] == "enum" and "subtract" in mode["choices"] and mode["value"] == "subtract"
    # value_json is what a row gets without params: sending every value back changes nothing
    everything = {n["name"]: {p["name"]: p["value"] for p in n["parameters"]} for n in described["nodes"]}
    explicit, implicit = client.score(ScoreRequest(f"lib:{GRAPH_ID}", [3, 3], TARGET, param_sets=[everything, {}]))
    assert explicit.ok and implicit.ok and explicit.reward == pytest.approx(implicit.reward, abs=1e-6)
    from_json = client.describe_graph(graph.to_json())
    assert from_json["graph_id"] == "" and [n["name"] for n in from_json["nodes"]] == list(graph.nodes)


@pytest.mark.parametrize("graph, code, culprit", [
    ("lib:no_such_graph", grpc.StatusCode.NOT_FOUND, "graph_id: unknown library graph 'no_such_graph'"),
    (json.dumps({"nodes": {"n": {"type": "nope"}}}), grpc.StatusCode.INVALID_ARGUMENT, "node 'n'"),
    ("[" * 100_000, grpc.StatusCode.INVALID_ARGUMENT, "graph_json"),
])
def test_describe_graph_errors_name_the_culprit(client, graph, code, culprit):
    with pytest.raises(RewardServiceError) as err:
        client.describe_graph(graph)
    assert err.value.code is code and culprit in err.value.message


def test_the_python_prefix_on_the_wire_is_not_found_with_a_hint(client):
    import pyarrow as pa

    table = pa.table({"sample_id": [0], "seed": [0], "graph_id": [f"lib:{GRAPH_ID}"],
                      "target_image": pa.array([TARGET], pa.binary())})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Score(reward_pb2.ScoreRequest(arrow_batch=payload), timeout=60, metadata=client._metadata)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "graph_id takes the bare library name, e.g. 'red_bricks'" in err.value.details()


def test_server_reflection_describes_the_service_and_needs_the_token(service, client):
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    ask = [reflection_pb2.ServerReflectionRequest(list_services=""),
           reflection_pb2.ServerReflectionRequest(file_containing_symbol="matrl.reward.v1.RewardService")]
    listed, found = stub.ServerReflectionInfo(iter(ask), metadata=client._metadata, timeout=30)
    names = {s.name for s in listed.list_services_response.service}
    assert {"matrl.reward.v1.RewardService", "grpc.health.v1.Health"} <= names
    proto = descriptor_pb2.FileDescriptorProto.FromString(found.file_descriptor_response.file_descriptor_proto[0])
    methods = {m.name for s in proto.service for m in s.method}
    assert {"Score", "ScoreStream", "PutTarget", "DeleteTarget", "ListGraphs", "DescribeGraph", "Resize",
            "GetPoolStatus"} == methods
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ServerReflectionInfo(iter(ask[:1]), timeout=30))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_response_keys_are_the_documented_ones(client):
    request = ScoreRequest(f"lib:{GRAPH_ID}", [0, 1, 2], TARGET, param_sets=PARAMS)
    reply = client.stub.Score(client._request_message([request]), timeout=120, metadata=client._metadata)
    assert set(reply.timings_s) == {"decode", "score", "encode", "total"}
    results = client._split(reply, [3])[0]
    assert [r.ok for r in results] == [True, True, False]
    assert all(set(r.terms) == {"gram", "lab"} for r in results if r.ok) and results[2].terms == {}
    timings = {"decode", "validate", "execute", "render", "cnn", "terms", "prepare", "reward", "total",
               "request_total"}
    assert all(set(r.timings) == timings for r in results)
    assert results[0].timings == results[1].timings  # per-row timings are the task's averages
    assert results[0].timings["total"] == pytest.approx(results[0].timings["request_total"] / 3)


def test_docs_examples_name_real_nodes_with_valid_values():
    api = (REPO / "docs" / "reward_api.md").read_text()
    examples = [(text, graph) for text, graph in re.findall(r"`(\{.*?\})` \((\w+)\)", api)
                if graph in library_names()]
    assert len(examples) >= 5
    for text, graph_id in examples:
        _check_overrides(graph_id, json.loads(text))
    reward_md = (REPO / "docs" / "reward.md").read_text()
    graph_id = re.search(r'structure="lib:(\w+)"', reward_md).group(1)
    param_sets = re.search(r"param_sets=(\[.*?\]),", reward_md).group(1)
    for overrides in json.loads(param_sets):
        _check_overrides(graph_id, overrides)
    methods = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].methods
    assert all(m.name in api for m in methods)


def _check_overrides(graph_id: str, overrides: dict) -> None:
    graph = load_library_graph(graph_id)
    graph.check_overrides(overrides)
    for node, params in overrides.items():
        for name, value in params.items():
            graph.nodes[node].spec.param(name).check(value, node)


# ---- the Node.js client --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_client():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_CLIENT / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        try:
            install = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, capture_output=True,
                                     text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci timed out")
        if install.returncode != 0:
            pytest.skip(f"the Node.js client's packages could not be installed: {install.stderr[-500:]}")

    def run(address: str, *args: str) -> tuple[int, object]:
        done = subprocess.run([node, str(NODE_CLIENT / "client.js"), "--address", address, "--token", TOKEN, *args],
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.strip(), done.stderr[-2000:]
        return done.returncode, json.loads(done.stdout)

    return run


def test_the_node_client_gets_the_same_rewards_as_reward_client(service, client, node_client, tmp_path):
    (tmp_path / "target.png").write_bytes(TARGET)
    # each row's params as JSON text, NaN as the bare token (what the docs tell a JSON writer to do)
    (tmp_path / "params.json").write_text("[" + ", ".join(json.dumps(p) for p in PARAMS) + "]")
    assert "NaN" in (tmp_path / "params.json").read_text()
    expected = client.score(ScoreRequest(f"lib:{GRAPH_ID}", [0, 1, 2], TARGET, param_sets=PARAMS))

    rc, out = node_client(service.address, "score", "--graph-id", GRAPH_ID, "--target", str(tmp_path / "target.png"),
                          "--seeds", "0,1,2", "--params", str(tmp_path / "params.json"))
    assert rc == 0, out
    rows = out["rows"]
    assert [r["sample_id"] for r in rows] == [0, 1, 2]
    assert [r["ok"] for r in rows] == [r.ok for r in expected] == [True, True, False]
    assert [r["reward"] for r in rows] == pytest.approx([r.reward for r in expected], abs=1e-9)
    assert [r["terms"] for r in rows] == [pytest.approx(r.terms, abs=1e-9) for r in expected]
    assert rows[2]["error"] == expected[2].error and "parameter 'gap'" in rows[2]["error"]

    rc, out = node_client(service.address, "put-target", "--key", "node/photo", "--target", str(tmp_path / "target.png"))
    assert rc == 0 and out["workers"] == 1
    rc, out = node_client(service.address, "score", "--graph-id", GRAPH_ID, "--target-key", "node/photo",
                          "--seeds", "0,1,2", "--params", str(tmp_path / "params.json"))
    assert [r["reward"] for r in out["rows"]] == pytest.approx([r.reward for r in expected], abs=1e-9)

    rc, out = node_client(service.address, "list-graphs")
    assert rc == 0 and [g["graph_id"] for g in out] == library_names()
    rc, out = node_client(service.address, "score", "--graph-id", f"lib:{GRAPH_ID}", "--target",
                          str(tmp_path / "target.png"), "--seeds", "0")
    assert rc == 2 and out["error"]["code"] == "NOT_FOUND" and "bare library name" in out["error"]["message"]
