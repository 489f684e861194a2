"""The gRPC reward service end to end: a real server on 127.0.0.1 over real Ray reward-worker actors.

Every bad input gets its gRPC status and a message naming the culprit, and the next good request
still succeeds.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import math

import grpc
import numpy as np
import pytest
from PIL import Image

from matrl.cli import build_parser, main
from matrl.commands.serve_reward import build_configs
from reward_service.arrow_codec import encode_request
from reward_service.client import RetryPolicy, RewardClient, RewardServiceError
from reward_service.config import MetricConfig, RewardConfig
from reward_service.pool import PoolConfig, RewardPool
from reward_service.proto import reward_pb2
from reward_service.server import BackgroundServer, RewardServer, ServerConfig
from reward_service.worker import RewardWorker, ScoreRequest
from tests.service_helpers import local_ray_service

TOKEN = "test-token-4f1c"
MAX_MESSAGE = 1 << 20
REWARD = RewardConfig(res=64, metric=MetricConfig(image_res=64))
GRAPH = json.dumps({"format": "matrl.graph/1", "name": "served", "nodes": {
    "noise": {"type": "perlin_fbm", "params": {"scale": 4}},
    "tone": {"type": "levels", "inputs": {"in": "noise"}},
    "bump": {"type": "normal_from_height", "inputs": {"height": "noise"}},
    "out": {"type": "output", "inputs": {"basecolor": "tone", "normal": "bump", "height": "noise"}}}})


def png(side: int = 64, value: int | None = None) -> bytes:
    rng = np.random.default_rng(side)
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8) if value is None \
        else np.full((side, side, 3), value, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


TARGET = png()


def good_request(n: int = 3, target=TARGET) -> ScoreRequest:
    return ScoreRequest(structure=GRAPH, seeds=list(range(n)), target=target,
                        param_sets=[{"noise": {"persistence": 0.2 + 0.6 * i / max(n, 1)}} for i in range(n)])


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with local_ray_service() as start:
        token_file = tmp_path_factory.mktemp("auth") / "token"
        token_file.write_text(TOKEN + "\n")
        server = BackgroundServer(RewardPool(REWARD, PoolConfig(workers=1)),
                                  ServerConfig(port=0, token_file=token_file, max_message_bytes=MAX_MESSAGE))
        yield start(server)


@pytest.fixture
def client(service):
    with RewardClient(service.address, token=TOKEN, timeout_s=60, retry=RetryPolicy(attempts=1)) as c:
        yield c


def assert_still_serving(client: RewardClient) -> None:
    results = client.score(good_request(2))
    assert [r.ok for r in results] == [True, True]


def test_score_matches_an_in_process_worker_row_by_row_and_a_nan_sample_fails_alone(client):
    request = good_request(4)
    request.param_sets[2] = {"noise": {"persistence": math.nan}}
    remote = client.score(request)
    local = RewardWorker(REWARD).score(request)
    assert [r.ok for r in remote] == [True, True, False, True]
    assert "node 'noise', parameter 'persistence'" in remote[2].error and "nan" in remote[2].error
    assert remote[2].reward == REWARD.failure_reward
    for got, want in zip(remote, local):
        assert got.ok == want.ok and got.error == want.error
        assert got.reward == pytest.approx(want.reward, abs=1e-5)
        assert got.terms == pytest.approx(want.terms, abs=1e-5)
    assert {"execute", "render", "reward", "total"} <= set(remote[0].timings)


def test_several_groups_in_one_request_come_back_split_in_order(client):
    other_target = (np.random.default_rng(3).random((48, 48, 3))).astype(np.float32)
    first, second = good_request(3), good_request(2, target=other_target)
    both = client.score_many([first, second])
    assert [len(r) for r in both] == [3, 2]
    assert [r.reward for r in both[0]] == pytest.approx([r.reward for r in client.score(first)], abs=1e-6)
    assert [r.reward for r in both[1]] == pytest.approx([r.reward for r in client.score(second)], abs=1e-6)


def test_tokens_score_like_their_decoded_parameters(client):
    from graph_executor.ir import loads_graph
    from policy.tokenizer import GraphTokenizer

    tokenizer = GraphTokenizer(loads_graph(GRAPH))
    tokens = [tokenizer.tokenize({"noise": {"persistence": p}}) for p in (0.3, 0.7)]
    by_tokens = client.score(ScoreRequest(structure=GRAPH, seeds=[1, 2], target=TARGET, tokens=tokens))
    by_params = client.score(ScoreRequest(structure=GRAPH, seeds=[1, 2], target=TARGET,
                                          param_sets=[tokenizer.detokenize(t) for t in tokens]))
    assert all(r.ok for r in by_tokens)
    assert [r.reward for r in by_tokens] == pytest.approx([r.reward for r in by_params], abs=1e-6)


def test_library_graph_by_id(client):
    from graph_executor.library import library_names

    names = library_names()
    if not names:
        pytest.skip("the graph library is empty")
    results = client.score(ScoreRequest(structure=f"lib:{names[0]}", seeds=[0], target=TARGET, param_sets=[{}]))
    assert results[0].ok, results[0].error


def test_put_target_then_score_by_key_equals_score_by_bytes(client):
    assert client.put_target("photo/a", TARGET) == 1
    by_key = client.score(good_request(2, target="photo/a"))
    by_bytes = client.score(good_request(2))
    assert [r.reward for r in by_key] == pytest.approx([r.reward for r in by_bytes], abs=1e-6)
    with pytest.raises(RewardServiceError) as err:
        client.put_target("photo/bad", b"\x89PNG broken")
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and "photo/bad" in err.value.message
    with pytest.raises(RewardServiceError) as err:
        client.score(good_request(1, target="photo/bad"))
    assert err.value.code is grpc.StatusCode.NOT_FOUND and "photo/bad" in err.value.message
    assert_still_serving(client)


def test_stream_answers_each_request_and_survives_a_bad_one(client):
    requests = [good_request(2), good_request(1, target=b"not an image"), good_request(3)]
    answers = {id(req): res for req, res in client.score_stream(requests)}
    assert [r.ok for r in answers[id(requests[0])]] == [True, True]
    assert [r.ok for r in answers[id(requests[2])]] == [True] * 3
    bad = answers[id(requests[1])]
    assert isinstance(bad, RewardServiceError) and bad.code is grpc.StatusCode.INVALID_ARGUMENT
    assert bad.message.startswith("target:")


def _raw(client: RewardClient, payload: bytes, metadata=None, timeout=30):
    metadata = client._metadata if metadata is None else metadata
    return client.stub.Score(reward_pb2.ScoreRequest(request_id="raw", arrow_batch=payload),
                             timeout=timeout, metadata=metadata)


def _arrow_without_seed() -> bytes:
    import pyarrow as pa

    table = pa.table({"sample_id": [0], "graph_json": [GRAPH], "target_key": ["photo/a"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _score(**changes):
    request = good_request(1)
    for key, value in changes.items():
        setattr(request, key, value)
    return lambda c: _raw(c, encode_request([request]))


BAD_GRAPH = json.dumps({"nodes": {"n": {"type": "no_such_node"}, "out": {"type": "output"}}})
DEEP_GRAPH = '{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}"  # past Python's recursion limit


def _score_params(text: str):
    """A request whose 'params' column holds `text` verbatim."""
    import pyarrow as pa

    table = pa.table({"sample_id": pa.array([0], pa.int64()), "graph_json": [GRAPH], "params": [text],
                      "seed": pa.array([0], pa.int64()), "target_image": [TARGET]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return lambda c: _raw(c, sink.getvalue().to_pybytes())
BAD_INPUTS = {
    "malformed arrow": (lambda c: _raw(c, b"\xff\xff\xff\xff garbage"),
                        grpc.StatusCode.INVALID_ARGUMENT, "malformed Arrow IPC stream"),
    "missing column": (lambda c: _raw(c, _arrow_without_seed()), grpc.StatusCode.INVALID_ARGUMENT,
                       "missing column 'seed'"),
    "unknown graph id": (_score(structure="lib:no_such_graph"), grpc.StatusCode.NOT_FOUND,
                         "graph_id: unknown library graph 'no_such_graph'"),
    "invalid graph json": (_score(structure=BAD_GRAPH), grpc.StatusCode.INVALID_ARGUMENT,
                           "graph_json: node 'n': unknown node type 'no_such_node'"),
    "deeply nested graph json": (_score(structure=DEEP_GRAPH), grpc.StatusCode.INVALID_ARGUMENT,
                                 "graph_json: nested deeper than"),
    "integer of 5000 digits in params": (_score_params('{"noise": {"persistence": ' + "9" * 5000 + "}}"),
                                         grpc.StatusCode.INVALID_ARGUMENT, "column 'params', row 0: integer of 5000"),
    "corrupt image": (_score(target=b"\x89PNG\r\n\x1a\n truncated"), grpc.StatusCode.INVALID_ARGUMENT,
                      "target: PNG truncated"),
    "wrong-size image": (_score(target=png(8)), grpc.StatusCode.INVALID_ARGUMENT,
                         "target: 8x8 outside the accepted sides"),
    "unknown target key": (_score(target="no/such/key"), grpc.StatusCode.NOT_FOUND,
                           "target_key: unknown target key 'no/such/key'"),
    "oversized message": (_score(target=np.random.default_rng(0).bytes(MAX_MESSAGE + 4096)),
                          grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    "missing token": (lambda c: _raw(c, encode_request([good_request(1)]), metadata=()),
                      grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>'"),
    "wrong token": (lambda c: _raw(c, encode_request([good_request(1)]), metadata=(("authorization", "Bearer x"),)),
                    grpc.StatusCode.UNAUTHENTICATED, "wrong token"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_status_and_the_server_keeps_serving(client, case):
    call, code, culprit = BAD_INPUTS[case]
    with pytest.raises(grpc.RpcError) as err:
        call(client)
    assert err.value.code() is code, err.value.details()
    assert culprit in err.value.details()
    assert_still_serving(client)


def test_deadline_is_reported_and_the_worker_stops_the_abandoned_work(service, client):
    before = service.run(service.pool.worker_stats())[0]
    with pytest.raises(RewardServiceError) as err:
        client.score(good_request(512), timeout_s=0.3)
    assert err.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serving(client)  # queued behind whatever the worker still had
    after = service.run(service.pool.worker_stats())[0]
    scored = (after["samples"] - after["failures"]) - (before["samples"] - before["failures"])
    assert scored < 512 + 2


def test_health_needs_no_token_and_reports_serving(service):
    with RewardClient(service.address) as anonymous:
        assert anonymous.health() == "SERVING"
        assert anonymous.health(service="") == "SERVING"


def _self_signed(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "matrl-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_server_on_the_same_pool_serves_tls_clients_only(service, tmp_path):
    cert, key = _self_signed(tmp_path)
    tls = service.run(_start(service.pool, ServerConfig(port=0, tls_cert=cert, tls_key=key)))
    try:
        with RewardClient(f"127.0.0.1:{tls.port}", root_cert=cert, timeout_s=60) as secure:
            assert [r.ok for r in secure.score(good_request(2))] == [True, True]
        with RewardClient(f"127.0.0.1:{tls.port}", timeout_s=5, retry=RetryPolicy(attempts=1)) as plain:
            with pytest.raises(RewardServiceError) as err:
                plain.score(good_request(1))
            assert err.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        service.run(tls.stop(0))


async def _start(pool: RewardPool, config: ServerConfig) -> RewardServer:
    server = RewardServer(pool, config)  # built on the server's loop: grpc.aio binds to it
    await server.start()
    return server


def test_cli_refuses_a_public_host_without_tls_or_insecure(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve-reward", "--host", "0.0.0.0", "--workers", "1"])
    assert exit_info.value.code == 2
    assert "needs TLS (--tls-cert/--tls-key) or an explicit --insecure" in capsys.readouterr().err


def test_cli_accepts_a_public_host_with_insecure_or_tls(tmp_path):
    parser = build_parser()
    _, pool, server = build_configs(parser.parse_args(["serve-reward", "--host", "0.0.0.0", "--insecure",
                                                       "--workers", "3"]))
    assert (server.host, server.insecure, pool.workers) == ("0.0.0.0", True, 3)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    _, _, server = build_configs(parser.parse_args(["serve-reward", "--host", "0.0.0.0", "--tls-cert", str(cert),
                                                    "--tls-key", str(key)]))
    assert server.tls and server.port == 50051
    with pytest.raises(ValueError, match="does not exist"):
        build_configs(parser.parse_args(["serve-reward", "--token-file", str(tmp_path / "absent")]))


def test_cli_configures_gpu_workers(tmp_path):
    parser = build_parser()
    overrides = tmp_path / "gpu.yaml"
    overrides.write_text("compile: true\ncnn_autocast: bfloat16\n")
    _, pool, _ = build_configs(parser.parse_args(["serve-reward", "--workers", "4", "--gpu-workers", "2",
                                                  "--num-gpus-per-worker", "0.5", "--gpu-task-samples", "2048",
                                                  "--gpu-reward-config", str(overrides)]))
    assert (pool.workers, pool.gpu_workers, pool.num_gpus_per_worker, pool.gpu_task_samples) == (4, 2, 0.5, 2048)
    assert pool.gpu_overrides == {"compile": True, "cnn_autocast": "bfloat16"}
    overrides.write_text("no_such_field: 1\n")
    with pytest.raises(ValueError, match="no_such_field"):
        build_configs(parser.parse_args(["serve-reward", "--gpu-reward-config", str(overrides)]))
    with pytest.raises(ValueError, match="absent.yaml"):
        build_configs(parser.parse_args(["serve-reward", "--gpu-reward-config", str(tmp_path / "absent.yaml")]))
