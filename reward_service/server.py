"""gRPC reward server (grpc.aio): Score, ScoreStream, PutTarget, Resize, health, token auth, TLS.

Every request is decoded and checked here (Arrow schema, graph, target key) before any worker
sees it, then split into tasks of at most `chunk_samples` rows that the pool scores in parallel.
Failures become gRPC statuses whose message names the culprit (see proto/reward.proto).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from graph_executor.errors import GraphError
from graph_executor.ir import loads_graph
from graph_executor.library import library_names
from reward_service.arrow_codec import PayloadError, SampleGroup, decode_request, encode_response
from reward_service.pool import PoolUnavailable, RewardPool, UnknownTarget, WorkerCrashed
from reward_service.proto import reward_pb2, reward_pb2_grpc
from reward_service.api import (DEFAULT_MAX_MESSAGE_BYTES, HEALTH_PREFIX, SERVICE_NAME, RequestError,  # noqa: F401
                                 read_token)

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
    chunk_samples: int = Field(64, ge=1, description="rows per worker task; larger groups are split")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = Field(False, description="allow plaintext on a non-loopback host")
    token_file: Path | None = Field(None, description="shared token: clients send 'authorization: Bearer <token>'")
    health_interval_s: float = Field(0.5, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "ServerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if not is_loopback(self.host) and self.tls_cert is None and not self.insecure:
            raise ValueError(f"listening on {self.host} (not loopback) needs TLS (--tls-cert/--tls-key) "
                             "or an explicit --insecure")
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
        self._graphs: OrderedDict[str, None] = OrderedDict()

    # ---- request checks ----------------------------------------------------------------------
    def _check_group(self, group: SampleGroup) -> None:
        if group.graph_id is not None:
            if group.graph_id not in library_names():
                raise RpcFailure(grpc.StatusCode.NOT_FOUND,
                                 f"graph_id: unknown library graph {group.graph_id!r}")
        elif group.structure not in self._graphs:
            try:
                loads_graph(group.structure)
            except GraphError as err:
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"graph_json: {err}") from None
            self._graphs[group.structure] = None
            while len(self._graphs) > 256:
                self._graphs.popitem(last=False)
        if group.target_key is not None and group.target_key not in self.pool.targets:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"target_key: unknown target key {group.target_key!r}; "
                                                        "register it with PutTarget")

    async def _score(self, request: reward_pb2.ScoreRequest, time_remaining: float | None) -> reward_pb2.ScoreResponse:
        start = time.perf_counter()
        try:
            decoded = decode_request(request.arrow_batch)
            for group in decoded.groups:
                self._check_group(group)
            decoded_at = time.perf_counter()
            tasks = [chunk for group in decoded.groups for chunk in group.chunks(self.config.chunk_samples)]
            timeout = None if time_remaining is None else time_remaining - (decoded_at - start)
            outputs = await _first_failure_cancels_rest(
                self.pool.score(t.to_request(request.request_id), timeout) for t in tasks)
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
        if not request.key:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key: empty target key")
        try:
            workers = await self.pool.put_target(request.key, request.image)
        except Exception as err:  # noqa: BLE001
            failure = _failure(err)
            await context.abort(failure.code, f"target {request.key!r}: {failure.message}")
        return reward_pb2.PutTargetResponse(key=request.key, workers=workers)

    async def Resize(self, request, context):
        if request.workers < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"workers: must be >= 0, got {request.workers}")
        try:
            await self.pool.resize(request.workers)
        except PoolUnavailable as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        return reward_pb2.PoolStatus(**self.pool.status())

    async def GetPoolStatus(self, request, context):
        return reward_pb2.PoolStatus(**self.pool.status())


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without 'authorization: Bearer <token>' (health checks are exempt)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization")
        if given is not None and hmac.compare_digest(str(given).encode(), self._expected):
            return await continuation(handler_call_details)
        message = ("missing 'authorization: Bearer <token>' metadata" if given is None
                   else "wrong token in 'authorization' metadata")
        handler = await continuation(handler_call_details)
        return _denying(handler, message) if handler is not None else None


def _denying(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def deny(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

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
        interceptors = [TokenAuthInterceptor(read_token(config.token_file))] if config.token_file else []
        limit = config.max_message_bytes
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
        reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(pool, config), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
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
