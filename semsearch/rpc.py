"""gRPC plumbing shared by the services: interceptors (API keys, in-flight limit, error mapping with
per-method metrics), channel options, health probing and the serve loop with liveness, readiness,
reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram

from semsearch.core.errors import ServiceError

log = logging.getLogger(__name__)
# What a client reads for a failure that is not its fault; the details go to the server's log.
INTERNAL_MESSAGE = "internal error (the server logged the details)"

# Paths every server leaves open: probes and grpcurl discovery work without an API key.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Label value for a method the server does not serve: metric labels stay a small fixed set whatever
# names callers invent.
UNKNOWN_METHOD = "unknown"

# Client channels: large messages, and reconnect within a second of a peer coming back (the gRPC
# default backoff grows to 2 minutes).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]


def method_names(descriptors: Iterable) -> frozenset[str]:
    """The short method names of protobuf service descriptors (for metric labels)."""
    return frozenset(m.name for d in descriptors for m in d.methods)


def _short(method: str, known: frozenset[str]) -> str:
    name = method.rsplit("/", 1)[-1]
    return name if name in known else UNKNOWN_METHOD


def _wrap(handler: grpc.RpcMethodHandler | None, guard) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind as `handler` whose every call runs inside `async with
    guard(context)`; the guard may time, count, reject (abort before entering) or map errors."""
    if handler is None:
        return None

    def unary(inner):
        async def call(request, context):
            async with guard(context):
                return await inner(request, context)

        return call

    def streaming(inner):
        async def call(request, context):
            async with guard(context):
                async for response in inner(request, context):
                    yield response

        return call

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)


def _rejecting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that aborts at once without parsing the request: no deserializer, so
    the body stays raw bytes, and streamed requests are never read."""

    async def unary(request, context):
        await context.abort(code, message)

    async def streaming(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    serializer = {"response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **serializer)
    return grpc.stream_stream_rpc_method_handler(streaming, **serializer)


class _Wrapped:
    """The wrapped handler of each method, built on its first call and reused while the inner handler
    stays the same object (interceptors run on every call; building handlers and guards is not free)."""

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler | None, build) -> grpc.RpcMethodHandler | None:
        if handler is None:
            return None
        cached = self._by_method.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, build(handler))
            self._by_method[method] = cached
        return cached[1]


class _ErrorGuard:
    """One call under ErrorMappingInterceptor: timed; a domain error becomes its status."""

    __slots__ = ("_begin", "_context", "_method", "_rejected", "_seconds")

    def __init__(self, method: str, seconds, rejected: Counter, context: grpc.aio.ServicerContext) -> None:
        self._method, self._seconds, self._rejected, self._context = method, seconds, rejected, context
        self._begin = 0.0

    async def __aenter__(self) -> None:
        self._begin = time.perf_counter()

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        try:
            # AbortError: already a status; CancelledError and other BaseExceptions pass through.
            if exc is None or not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
                return False
            if isinstance(exc, ServiceError) and exc.code != "INTERNAL":
                code, message = grpc.StatusCode[exc.code], str(exc)
            else:
                log.error("%s failed", self._method, exc_info=(exc_type, exc, tb))
                code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
            self._rejected.labels(self._method, code.name).inc()
            await self._context.abort(code, message)
            return False
        finally:
            self._seconds.observe(time.perf_counter() - self._begin)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors (semsearch.core.errors, each naming its status code) into gRPC statuses with
    their message, and records per-method latency and rejections, so servicer bodies contain neither.
    Anything else is INTERNAL with a generic message; the details go to the log only."""

    def __init__(self, request_seconds: Histogram, rejected: Counter, methods: frozenset[str]) -> None:
        self.request_seconds = request_seconds
        self.rejected = rejected
        self.methods = methods
        self._wrapped = _Wrapped()

    async def intercept_service(self, continuation, handler_call_details):
        method = _short(handler_call_details.method, self.methods)

        def build(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
            seconds = self.request_seconds.labels(method)
            return _wrap(handler, lambda context: _ErrorGuard(method, seconds, self.rejected, context))

        handler = await continuation(handler_call_details)
        return self._wrapped.get(handler_call_details.method, handler, build)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Requires metadata `x-api-key` to match one of `keys` (constant-time compare), checked from the
    call's metadata before the request body is parsed; health and reflection stay open."""

    def __init__(self, keys: Sequence[str], rejected: Counter, methods: frozenset[str]) -> None:
        self.keys = [k.encode() for k in keys]
        self.rejected = rejected
        self.methods = methods

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not self.keys or method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("x-api-key", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if any(hmac.compare_digest(given_bytes, key) for key in self.keys):
            return await continuation(handler_call_details)
        self.rejected.labels(_short(method, self.methods), "UNAUTHENTICATED").inc()
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-api-key metadata")


class _Slot:
    """One call under InFlightLimiter: takes a slot or aborts with RESOURCE_EXHAUSTED."""

    __slots__ = ("_context", "_method", "_owner")

    def __init__(self, owner: InFlightLimiter, method: str, context: grpc.aio.ServicerContext) -> None:
        self._owner, self._method, self._context = owner, method, context

    async def __aenter__(self) -> None:
        owner = self._owner
        if owner.in_flight >= owner.limit:
            owner.rejected.labels(_short(self._method, owner.methods), "RESOURCE_EXHAUSTED").inc()
            await self._context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {owner.limit} requests in flight"
            )
        owner.in_flight += 1
        owner.gauge.set(owner.in_flight)

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        self._owner.in_flight -= 1
        self._owner.gauge.set(self._owner.in_flight)
        return False


class InFlightLimiter(grpc.aio.ServerInterceptor):
    """At most `limit` requests in flight (RESOURCE_EXHAUSTED beyond), tracked in `gauge`."""

    def __init__(self, limit: int, gauge: Gauge, rejected: Counter, methods: frozenset[str]) -> None:
        self.limit = limit
        self.gauge = gauge
        self.rejected = rejected
        self.methods = methods
        self.in_flight = 0
        self._wrapped = _Wrapped()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return handler
        return self._wrapped.get(
            method, handler, lambda inner: _wrap(inner, lambda context: _Slot(self, method, context))
        )


def server_options(max_message_bytes: int, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Message limits; SO_REUSEPORT only for processes meant to share a port (gateway workers), so that
    a second server started on a port in use fails loudly instead of sharing its traffic."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def health_serving(
    address: str, service: str = "", timeout: float = 1.0, credentials: grpc.ChannelCredentials | None = None
) -> bool:
    """True when the gRPC health service at `address` says SERVING for `service` ("" = the process)."""
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


async def serve(
    server: grpc.aio.Server,
    address: str,
    service_names: list[str],
    *,
    load: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    grace_s: float = 10.0,
    readiness: Callable[[], Awaitable[bool]] | None = None,
    readiness_interval_s: float = 2.0,
    health_address: str = "",
) -> None:
    """Serve until SIGTERM/SIGINT with the standard health service and reflection.

    Health has two meanings, for two probes: the empty service name is liveness (SERVING once `load()`
    returned and until shutdown: the process works), each named service is readiness (after `load()`,
    it follows `readiness()` every `readiness_interval_s`; SERVING when there is none). With
    `health_address`, a second, plaintext server answers health only there (probes of a TLS server).
    On a signal: graceful shutdown, then `server.stop(grace_s)` for in-flight calls, then `close()`."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, reflection.SERVICE_NAME, health.SERVICE_NAME], server
    )
    # An empty address means the caller already bound a (TLS) port.
    if address and server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot bind {address}")
    health_server = None
    if health_address:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        if health_server.add_insecure_port(health_address) == 0:
            raise RuntimeError(f"cannot bind {health_address}")
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    if health_server is not None:
        await health_server.start()
    log.info("listening on %s (NOT_SERVING until loaded)", address or "a TLS port")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await load()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    async def follow_readiness() -> None:
        ready: bool | None = None
        while True:
            try:
                ok = await readiness() if readiness is not None else True
            except Exception:
                log.exception("readiness check failed")
                ok = False
            if ok != ready:
                if ready is not None or not ok:
                    log.warning("readiness: %s", "SERVING" if ok else "NOT_SERVING")
                ready = ok
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in service_names:
                    await health_servicer.set(name, status)
            await asyncio.sleep(readiness_interval_s)

    watcher = asyncio.create_task(follow_readiness())
    log.info("live on %s", address or "a TLS port")
    await stop.wait()
    watcher.cancel()
    log.info("shutting down: draining in-flight calls for up to %.0fs", grace_s)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    if health_server is not None:
        await health_server.stop(1)
    await close()
    log.info("stopped")
