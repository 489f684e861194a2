"""gRPC reward server (grpc.aio): Score, ScoreStream, PutTarget, DeleteTarget, ListGraphs,
DescribeGraph, Resize (administrative), GetPoolStatus; health, server reflection, token auth, TLS.

Every request is decoded and checked here (Arrow schema, graph, target key) before any worker
sees it; the pool then cuts each group into tasks as workers become free (`RewardPool.score_split`:
`chunk_samples` rows for a CPU worker, `PoolConfig.gpu_task_samples` for a GPU worker).
Failures become gRPC statuses whose message names the culprit (docs/reward_api.md,
proto/reward.proto).

Auth: with `token_file`, every call but health checks needs "authorization: Bearer <token>".
Resize is administrative: it needs the token of `admin_token_file` (which is also accepted
wherever the scoring token is), and a server without an admin token answers it PERMISSION_DENIED,
so a scoring client can neither empty the pool nor ask for more workers than exist.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from graph_executor.errors import GraphError
from graph_executor.ir import Graph, loads_graph
from graph_executor.library import library_names, load_library_graph
from reward_service.arrow_codec import PayloadError, SampleGroup, decode_request, encode_response
from reward_service.pool import (InsufficientResources, InvalidSize, PoolUnavailable, RewardPool, UnknownTarget,
                                 WorkerCrashed)
from reward_service.proto import reward_pb2, reward_pb2_grpc
from reward_service.api import (DEFAULT_MAX_MESSAGE_BYTES, HEALTH_PREFIX, LIBRARY_PREFIX, SERVICE_NAME,  # noqa: F401
                                 RequestError, read_token)

MAX_KEY_CHARS = 1024
ADMIN_METHODS = frozenset({f"/{SERVICE_NAME}/Resize"})
# What parsing untrusted graph JSON may raise besides GraphError (deep nesting, odd values)
_PARSE_ERRORS = (GraphError, ValueError, TypeError, KeyError, RecursionError)

log = logging.getLogger(__name__)



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerConfig(BaseModel):
    """Where and how the server listens. Off loopback it needs TLS or an explicit `insecure`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    chunk_samples: int = Field(64, ge=1, description="rows per CPU worker task; larger groups are split (GPU "
                               "workers take PoolConfig.gpu_task_samples rows)")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = Field(False, description="allow plaintext on a non-loopback host")
    token_file: Path | None = Field(None, description="shared token: clients send 'authorization: Bearer <token>'")
    admin_token_file: Path | None = Field(None, description="admin token for Resize (also accepted for every "
                                          "other call); without it Resize answers PERMISSION_DENIED")
    reflection: bool = Field(True, description="serve gRPC server reflection (grpc.reflection.v1alpha)")
    health_interval_s: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "ServerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if not is_loopback(self.host) and self.tls_cert is None and not self.insecure:
            raise ValueError(f"listening on {self.host} (not loopback) needs TLS (--tls-cert/--tls-key) "
                             "or an explicit --insecure")
        if self.admin_token_file is not None and self.admin_token_file == self.token_file:
            raise ValueError("the admin token file must differ from the scoring token file")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class RpcFailure(Exception):
    """A request that fails as a whole: its gRPC status code and a message naming the culprit."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _failure(err: BaseException) -> RpcFailure:
    """Map pool, worker and codec exceptions to gRPC statuses."""
    cause = getattr(err, "cause", None) or err
    if isinstance(err, RpcFailure):
        return err
    if isinstance(cause, (PayloadError, RequestError, GraphError)):
        return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(cause))
    if isinstance(cause, UnknownTarget):
        return RpcFailure(grpc.StatusCode.NOT_FOUND, str(cause.args[0]))
    if isinstance(err, asyncio.TimeoutError):
        return RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded: {err}".rstrip(": "))
    if isinstance(err, PoolUnavailable):
        return RpcFailure(grpc.StatusCode.UNAVAILABLE, str(err))
    if isinstance(err, WorkerCrashed):
        return RpcFailure(grpc.StatusCode.INTERNAL, str(err))
    if isinstance(err, InvalidSize):
        return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    if isinstance(err, InsufficientResources):
        return RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
    log.exception("unexpected error while scoring", exc_info=err)
    return RpcFailure(grpc.StatusCode.INTERNAL, f"{type(cause).__name__}: {cause}")


async def _first_failure_cancels_rest(coros) -> list:
    """Like asyncio.gather, but one failure cancels the other tasks (their work is wasted anyway)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
        return [t.result() for t in tasks]
    finally:
        for task in tasks:
            task.cancel()


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """The RPC handlers, over a started RewardPool."""

    def __init__(self, pool: RewardPool, config: ServerConfig):
        self.pool = pool
        self.config = config
        self._graphs: OrderedDict[bytes, None] = OrderedDict()

    # ---- request checks ----------------------------------------------------------------------
    def _check_group(self, group: SampleGroup) -> None:
        if group.graph_id is not None:
            _check_graph_id(group.graph_id)
        else:  # remember validated structures by digest: 256 texts of up to a message each would not be small
            digest = hashlib.sha1(group.structure.encode()).digest()
            if digest not in self._graphs:
                _parse_graph_json(group.structure)
                self._graphs[digest] = None
                while len(self._graphs) > 256:
                    self._graphs.popitem(last=False)
        if group.target_key is not None and not self.pool.has_target(group.target_key):
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"target_key: unknown target key {group.target_key!r}; "
                                                        "register it with PutTarget (keys are dropped when "
                                                        "deleted or least recently used beyond the store's budget)")

    async def _score(self, request: reward_pb2.ScoreRequest, time_remaining: float | None) -> reward_pb2.ScoreResponse:
        start = time.perf_counter()
        try:
            decoded = decode_request(request.arrow_batch)
            for group in decoded.groups:
                self._check_group(group)
            decoded_at = time.perf_counter()
            tasks = decoded.groups
            timeout = None if time_remaining is None else time_remaining - (decoded_at - start)
            outputs = await _first_failure_cancels_rest(
                self.pool.score_split(t.to_request(request.request_id), timeout, self.config.chunk_samples)
                for t in tasks)
        except Exception as err:  # noqa: BLE001 — every failure becomes a status naming its cause
            raise _failure(err) from None
        scored_at = time.perf_counter()
        ordered = [None] * len(decoded)
        for task, results in zip(tasks, outputs):
            for row, result in zip(task.rows, results):
                ordered[row] = result
        payload = encode_response(decoded.sample_ids, ordered)
        end = time.perf_counter()
        return reward_pb2.ScoreResponse(
            request_id=request.request_id, arrow_batch=payload,
            timings_s={"decode": decoded_at - start, "score": scored_at - decoded_at,
                       "encode": end - scored_at, "total": end - start})

    # ---- RPCs --------------------------------------------------------------------------------
    async def Score(self, request, context):
        try:
            return await self._score(request, context.time_remaining())
        except RpcFailure as failure:
            await context.abort(failure.code, failure.message)

    async def ScoreStream(self, request_iterator, context):
        """Requests run concurrently; responses are written as they finish, matched by request_id."""
        responses: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def handle(request):
            try:
                response = await self._score(request, context.time_remaining())
            except RpcFailure as failure:
                response = reward_pb2.ScoreResponse(
                    request_id=request.request_id,
                    error=reward_pb2.RequestError(code=failure.code.value[0], message=failure.message))
            await responses.put(response)

        async def read_all():
            async for request in request_iterator:
                task = asyncio.ensure_future(handle(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
            await responses.put(None)

        reader = asyncio.ensure_future(read_all())
        try:
            while (response := await responses.get()) is not None:
                yield response
            await reader
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def PutTarget(self, request, context):
        if not request.key or len(request.key) > MAX_KEY_CHARS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"key: target keys have 1 to {MAX_KEY_CHARS} characters, got {len(request.key)}")
        try:
            workers = await self.pool.put_target(request.key, request.image)
        except Exception as err:  # noqa: BLE001
            failure = _failure(err)
            await context.abort(failure.code, f"target {request.key!r}: {failure.message}")
        return reward_pb2.PutTargetResponse(key=request.key, workers=workers)

    async def DeleteTarget(self, request, context):
        try:
            workers = await self.pool.delete_target(request.key)
        except Exception as err:  # noqa: BLE001
            failure = _failure(err)
            await context.abort(failure.code, f"key: {failure.message}")
        return reward_pb2.DeleteTargetResponse(key=request.key, workers=workers)

    async def ListGraphs(self, request, context):
        return reward_pb2.ListGraphsResponse(graphs=_library_summaries())

    async def DescribeGraph(self, request, context):
        which = request.WhichOneof("graph")
        try:
            if which == "graph_id":
                return _describe(load_library_graph(_check_graph_id(request.graph_id)), request.graph_id)
            if which == "graph_json":
                return _describe(_parse_graph_json(request.graph_json))
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "graph: give graph_id or graph_json")
        except RpcFailure as failure:
            await context.abort(failure.code, failure.message)

    async def Resize(self, request, context):
        """Administrative (the interceptor checks the admin token). If the caller gives up, grpc.aio
        cancels this coroutine and the pool removes the workers that are not ready yet."""
        try:
            await self.pool.resize(request.workers)
        except Exception as err:  # noqa: BLE001
            failure = _failure(err)
            await context.abort(failure.code, failure.message)
        return self._status()

    async def GetPoolStatus(self, request, context):
        return self._status()

    def _status(self) -> reward_pb2.PoolStatus:
        return reward_pb2.PoolStatus(**self.pool.status(), max_workers=self.pool.size_limit(),
                                     min_workers=self.pool.config.min_workers)


def _check_graph_id(graph_id: str) -> str:
    if graph_id not in library_names():
        hint = (f" (graph_id takes the bare library name, e.g. {graph_id[len(LIBRARY_PREFIX):]!r}; "
                f"'{LIBRARY_PREFIX}' is the Python API's prefix)" if graph_id.startswith(LIBRARY_PREFIX) else
                "; ListGraphs lists the library")
        raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"graph_id: unknown library graph {graph_id!r}{hint}")
    return graph_id


def _parse_graph_json(text: str) -> Graph:
    try:
        return loads_graph(text)
    except _PARSE_ERRORS as err:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                         f"graph_json: {err if isinstance(err, GraphError) else type(err).__name__ + ': ' + str(err)}"
                         ) from None


@functools.lru_cache(maxsize=1)
def _library_summaries_cached(names: tuple[str, ...]) -> tuple:
    out = []
    for name in names:
        graph = load_library_graph(name)
        out.append(reward_pb2.GraphSummary(
            graph_id=name, category=graph.category, description=str(graph.meta.get("description", "")),
            nodes=len(graph.nodes), parameters=sum(len(n.spec.params) for n in graph.nodes.values())))
    return tuple(out)


def _library_summaries() -> list:
    return list(_library_summaries_cached(tuple(library_names())))


def _describe(graph: Graph, graph_id: str = "") -> reward_pb2.GraphDescription:
    """Every node and parameter that the params JSON may set, with the graph's value."""
    nodes = []
    for node in graph.nodes.values():
        params = []
        for spec in node.spec.params:
            params.append(reward_pb2.ParameterDescription(
                name=spec.name, kind=spec.kind.value, low=spec.low, high=spec.high, choices=list(spec.choices),
                components=spec.components, value_json=json.dumps(node.params.get(spec.name, spec.default)),
                default_json=json.dumps(spec.default), predicted=spec.predicted, doc=spec.doc))
        nodes.append(reward_pb2.NodeDescription(name=node.name, type=node.type, parameters=params))
    return reward_pb2.GraphDescription(graph_id=graph_id, name=graph.name, category=graph.category,
                                       description=str(graph.meta.get("description", "")),
                                       graph_json=graph.to_json(indent=None), nodes=nodes)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks 'authorization: Bearer <token>' metadata. Health checks are exempt. Administrative
    methods (ADMIN_METHODS) need the admin token: without one configured they are refused
    (PERMISSION_DENIED), a scoring token gets PERMISSION_DENIED, no or a wrong token
    UNAUTHENTICATED. Other methods need the scoring token (or the admin token) when one is set."""

    def __init__(self, token: str | None, admin_token: str | None = None):
        self._expected = f"Bearer {token}".encode() if token else None
        self._admin = f"Bearer {admin_token}".encode() if admin_token else None

    @staticmethod
    def _matches(given: bytes | None, expected: bytes | None) -> bool:
        return given is not None and expected is not None and hmac.compare_digest(given, expected)

    def _refusal(self, method: str, given: bytes | None) -> tuple[grpc.StatusCode, str] | None:
        if method.startswith(HEALTH_PREFIX):
            return None
        if method in ADMIN_METHODS:
            name = method.rsplit("/", 1)[-1]
            if self._admin is None:
                return (grpc.StatusCode.PERMISSION_DENIED, f"{name} is an administrative call and this server has "
                        "no admin token (start it with an admin token file: --admin-token-file)")
            if self._matches(given, self._admin):
                return None
            if self._matches(given, self._expected):
                return grpc.StatusCode.PERMISSION_DENIED, f"{name} needs the admin token, not the scoring token"
            return grpc.StatusCode.UNAUTHENTICATED, (f"{name} needs 'authorization: Bearer <admin token>' metadata"
                                                     if given is None else "wrong token in 'authorization' metadata")
        if self._expected is None or self._matches(given, self._expected) or self._matches(given, self._admin):
            return None
        return grpc.StatusCode.UNAUTHENTICATED, ("missing 'authorization: Bearer <token>' metadata" if given is None
                                                 else "wrong token in 'authorization' metadata")

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization")
        refusal = self._refusal(method, None if given is None else str(given).encode())
        handler = await continuation(handler_call_details)
        if refusal is None or handler is None:
            return handler
        return _denying(handler, *refusal)


def _denying(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def deny(_request, context):
        await context.abort(code, message)

    kwargs = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


class RewardServer:
    """A started pool behind a grpc.aio server; `await start()` returns the bound port."""

    def __init__(self, pool: RewardPool, config: ServerConfig = ServerConfig()):
        self.pool = pool
        self.config = config
        self.port: int | None = None
        self.health = health.aio.HealthServicer()
        token = read_token(config.token_file) if config.token_file else None
        admin = read_token(config.admin_token_file) if config.admin_token_file else None
        if admin is not None and admin == token:
            raise ValueError("the admin token must differ from the scoring token")
        limit = config.max_message_bytes
        self.server = grpc.aio.server(interceptors=[TokenAuthInterceptor(token, admin)], options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
        reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(pool, config), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME), self.server)
        self._health_task: asyncio.Task | None = None

    async def start(self) -> int:
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls:
            credentials = grpc.ssl_server_credentials(
                [(self.config.tls_key.read_bytes(), self.config.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"could not bind {address}")
        await self.server.start()
        await self._update_health()
        self._health_task = asyncio.ensure_future(self._watch_health())
        return self.port

    async def _update_health(self) -> None:
        ready = self.pool.status()["ready"] > 0
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self._update_health()

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def stop(self, grace_s: float | None = 5.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


class BackgroundServer:
    """Pool and server on their own event loop in a daemon thread: for in-process use (a local
    job or demo driver, tests). `start()` returns the bound port; `run(coro)` runs a coroutine
    on the server's loop (e.g. `run(server.pool.resize(4))`). By default it binds a free port."""

    def __init__(self, pool: RewardPool, config: ServerConfig = ServerConfig(port=0)):
        self.pool = pool
        self.config = config
        self.server: RewardServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="reward-server", daemon=True)

    def run(self, coro, timeout_s: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self, timeout_s: float | None = None) -> int:
        self._thread.start()

        async def boot() -> int:
            await self.pool.start()
            self.server = RewardServer(self.pool, self.config)
            return await self.server.start()

        return self.run(boot(), timeout_s)

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.server.port}"

    def stop(self) -> None:
        async def shutdown() -> None:
            if self.server is not None:
                await self.server.stop(1.0)
            await self.pool.close()

        if self._thread.is_alive():
            self.run(shutdown(), 60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
