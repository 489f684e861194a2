"""RewardClient: the synchronous gRPC client rollout workers use to score samples remotely.

`score(request)` mirrors `RewardWorker.score(request)` (same ScoreRequest / ScoreResult types),
so a caller can switch between an in-process worker and the service. Transient failures
(UNAVAILABLE, and DEADLINE_EXCEEDED when the caller allows it) are retried with exponential
backoff inside the overall deadline.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reward_service.arrow_codec import decode_response, encode_request
from reward_service.proto import reward_pb2, reward_pb2_grpc
from reward_service.api import (DEFAULT_MAX_MESSAGE_BYTES, LIBRARY_PREFIX, SERVICE_NAME, ScoreRequest, ScoreResult,
                                read_token)

class RewardServiceError(RuntimeError):
    """A request the service refused or could not finish: gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    retry_deadline_exceeded: bool = True

    def retryable(self, code: grpc.StatusCode) -> bool:
        return code is grpc.StatusCode.UNAVAILABLE or (
            self.retry_deadline_exceeded and code is grpc.StatusCode.DEADLINE_EXCEEDED)


class RewardClient:
    """Connects to a reward server. `timeout_s` is the default deadline of one `score` call,
    retries included; `attempt_timeout_s` (optional) bounds each attempt."""

    def __init__(self, address: str = "127.0.0.1:50051", *, token: str | None = None,
                 token_file: str | Path | None = None, admin_token: str | None = None,
                 admin_token_file: str | Path | None = None, root_cert: str | Path | bytes | None = None,
                 server_name: str | None = None, timeout_s: float = 120.0, attempt_timeout_s: float | None = None,
                 retry: RetryPolicy = RetryPolicy(), max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        if token is None and token_file is not None:
            token = read_token(token_file)
        if admin_token is None and admin_token_file is not None:
            admin_token = read_token(admin_token_file)
        # Resize (administrative) sends the admin token; without one it sends the scoring token and
        # the server answers PERMISSION_DENIED.
        self._admin_metadata = (("authorization", f"Bearer {admin_token}"),) if admin_token else None
        self.address = address
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.retry = retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert is not None:
            pem = root_cert if isinstance(root_cert, bytes) else Path(root_cert).read_bytes()
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=pem), options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._ids = itertools.count()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------------
    def _call(self, method, message, timeout_s: float | None, metadata=None):
        """Invoke a unary RPC with retries on transient codes, all within one overall deadline."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        backoff = self.retry.initial_backoff_s
        for attempt in itertools.count(1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RewardServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "client deadline passed before the call")
            per_attempt = min(remaining, self.attempt_timeout_s or remaining)
            try:
                return method(message, timeout=per_attempt, metadata=self._metadata if metadata is None else metadata)
            except grpc.RpcError as err:
                code = err.code()
                last_try = attempt >= self.retry.attempts or deadline - time.monotonic() <= backoff
                if not self.retry.retryable(code) or last_try:
                    raise RewardServiceError(code, err.details() or "") from None
            time.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self.retry.max_backoff_s)

    def _request_message(self, requests: Sequence[ScoreRequest]) -> reward_pb2.ScoreRequest:
        request_id = requests[0].request_id if len(requests) == 1 and requests[0].request_id else \
            f"{uuid.uuid4().hex[:12]}-{next(self._ids)}"
        return reward_pb2.ScoreRequest(request_id=request_id, arrow_batch=encode_request(requests))

    @staticmethod
    def _split(response: reward_pb2.ScoreResponse, sizes: Sequence[int]) -> list[list[ScoreResult]]:
        if response.HasField("error"):
            raise RewardServiceError(_CODES.get(response.error.code, grpc.StatusCode.UNKNOWN),
                                     response.error.message)
        _, results = decode_response(response.arrow_batch)
        out, start = [], 0
        for size in sizes:
            out.append(results[start:start + size])
            start += size
        return out

    # ---- scoring -----------------------------------------------------------------------------
    def score(self, request: ScoreRequest, timeout_s: float | None = None) -> list[ScoreResult]:
        """Score one request remotely: one result per sample, in order (like RewardWorker.score)."""
        return self.score_many([request], timeout_s)[0]

    def score_many(self, requests: Sequence[ScoreRequest], timeout_s: float | None = None) -> list[list[ScoreResult]]:
        """Several (graph, target) groups in one call; the server scores them in parallel."""
        message = self._request_message(requests)
        response = self._call(self.stub.Score, message, timeout_s)
        return self._split(response, [len(r) for r in requests])

    def score_stream(self, requests: Iterable[ScoreRequest], timeout_s: float | None = None
                     ) -> Iterator[tuple[ScoreRequest, list[ScoreResult] | RewardServiceError]]:
        """Stream requests over one call; yields (request, results or error) as each finishes
        (not necessarily in order). `timeout_s` is the deadline of the whole stream (no retries)."""
        sent: dict[str, ScoreRequest] = {}

        def messages():
            for request in requests:
                message = self._request_message([request])
                sent[message.request_id] = request
                yield message

        timeout = timeout_s if timeout_s is not None else self.timeout_s
        try:
            for response in self.stub.ScoreStream(messages(), timeout=timeout, metadata=self._metadata):
                request = sent.pop(response.request_id)
                try:
                    yield request, self._split(response, [len(request)])[0]
                except RewardServiceError as err:
                    yield request, err
        except grpc.RpcError as err:
            raise RewardServiceError(err.code(), err.details() or "") from None

    # ---- administration ----------------------------------------------------------------------
    def put_target(self, key: str, image: bytes, timeout_s: float | None = None) -> int:
        """Register an encoded target image under `key` on every worker; returns how many hold it."""
        reply = self._call(self.stub.PutTarget, reward_pb2.PutTargetRequest(key=key, image=image), timeout_s)
        return reply.workers

    def delete_target(self, key: str, timeout_s: float | None = None) -> int:
        """Forget a target key on the server and its workers; returns how many workers held it."""
        return self._call(self.stub.DeleteTarget, reward_pb2.DeleteTargetRequest(key=key), timeout_s).workers

    def list_graphs(self, timeout_s: float | None = None) -> list[dict]:
        """The library graphs that `graph_id` (ScoreRequest structure "lib:<name>") can name."""
        reply = self._call(self.stub.ListGraphs, reward_pb2.ListGraphsRequest(), timeout_s)
        return [_message_dict(g) for g in reply.graphs]

    def describe_graph(self, graph: str, timeout_s: float | None = None) -> dict:
        """Nodes and parameters of "lib:<name>" or of graph JSON text (what param_sets may set)."""
        request = (reward_pb2.DescribeGraphRequest(graph_id=graph[len(LIBRARY_PREFIX):])
                   if graph.startswith(LIBRARY_PREFIX) else reward_pb2.DescribeGraphRequest(graph_json=graph))
        reply = self._call(self.stub.DescribeGraph, request, timeout_s)
        out = _message_dict(reply)
        out["nodes"] = [{"name": n.name, "type": n.type, "parameters": [
            {**_message_dict(p), "choices": list(p.choices), "value": json.loads(p.value_json),
             "default": json.loads(p.default_json)} for p in n.parameters]} for n in reply.nodes]
        return out

    def resize(self, workers: int, timeout_s: float | None = None) -> dict[str, int]:
        """Administrative: needs the admin token (`admin_token`/`admin_token_file`)."""
        reply = self._call(self.stub.Resize, reward_pb2.ResizeRequest(workers=workers), timeout_s,
                           metadata=self._admin_metadata)
        return _status_dict(reply)

    def pool_status(self, timeout_s: float | None = None) -> dict[str, int]:
        return _status_dict(self._call(self.stub.GetPoolStatus, reward_pb2.PoolStatusRequest(), timeout_s))

    def health(self, service: str = SERVICE_NAME, timeout_s: float = 5.0) -> str:
        """'SERVING' or 'NOT_SERVING' (health checks need no token)."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the server answers SERVING (it has at least one ready worker)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.health(timeout_s=max(0.1, min(5.0, deadline - time.monotonic()))) == "SERVING":
                    return
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.UNAVAILABLE and err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            if time.monotonic() > deadline:
                raise RewardServiceError(grpc.StatusCode.UNAVAILABLE, f"{self.address} not serving after {timeout_s:g}s")
            time.sleep(0.2)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _status_dict(message: reward_pb2.PoolStatus) -> dict[str, int]:
    return {field.name: getattr(message, field.name) for field in message.DESCRIPTOR.fields}


def _message_dict(message) -> dict:
    """Scalar fields of a message (repeated and message fields are left to the caller)."""
    return {f.name: getattr(message, f.name) for f in message.DESCRIPTOR.fields
            if f.type != f.TYPE_MESSAGE and not f.is_repeated}
