"""gRPC plumbing shared by the services: an interceptor that maps domain errors to status codes and
times every RPC, and the serve loop with health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)


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


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain exceptions into gRPC statuses (message included) and records per-method latency
    and rejections, so servicer bodies contain neither."""

    def __init__(
        self,
        codes: dict[type[BaseException], grpc.StatusCode],
        request_seconds: Histogram,
        rejected: Counter,
    ) -> None:
        self.codes = codes
        self.request_seconds = request_seconds
        self.rejected = rejected

    def _code_for(self, exc: BaseException) -> grpc.StatusCode | None:
        for kind, code in self.codes.items():
            if isinstance(exc, kind):
                return code
        return None

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method.rsplit("/", 1)[-1]

        @contextlib.asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext):
            begin = time.perf_counter()
            try:
                yield
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                code = self._code_for(exc)
                if code is None:
                    log.exception("%s failed", method)
                    code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
                else:
                    message = str(exc)
                self.rejected.labels(method, code.name).inc()
                await context.abort(code, message)
            finally:
                self.request_seconds.labels(method).observe(time.perf_counter() - begin)

        return _wrap(await continuation(handler_call_details), guard)


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def serve(
    server: grpc.aio.Server,
    address: str,
    service_names: list[str],
    *,
    load: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    grace_s: float = 10.0,
    health_check: Callable[[], Awaitable[bool]] | None = None,
    health_interval_s: float = 2.0,
) -> None:
    """Start `server` on `address` with the standard health service (NOT_SERVING until `load()`
    finished, then SERVING) and reflection; with `health_check`, the status follows it every
    `health_interval_s` afterwards. On SIGTERM/SIGINT enter graceful shutdown, stop with `grace_s`
    for in-flight calls, then `close()`."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, reflection.SERVICE_NAME, health.SERVICE_NAME], server
    )
    # An empty address means the caller already bound a (TLS) port.
    if address and server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot bind {address}")
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("listening on %s (NOT_SERVING until loaded)", address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await load()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("SERVING on %s", address)

    async def follow_health() -> None:
        serving = True
        while True:
            await asyncio.sleep(health_interval_s)
            try:
                ok = await health_check()
            except Exception:
                ok = False
            if ok != serving:
                serving = ok
                log.warning("health: %s", "SERVING" if ok else "NOT_SERVING (a dependency is down)")
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", *service_names):
                    await health_servicer.set(name, status)

    watcher = asyncio.create_task(follow_health()) if health_check is not None else None
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    log.info("shutting down: draining in-flight calls for up to %.0fs", grace_s)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    await close()
    log.info("stopped")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Requires metadata `x-api-key` to match one of `keys` (constant-time compare); health and
    reflection stay open so probes and grpcurl discovery work without a key."""

    OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, keys: Sequence[str], rejected: Counter) -> None:
        self.keys = [k.encode() for k in keys]
        self.rejected = rejected

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not self.keys or method.startswith(self.OPEN_PREFIXES):
            return await continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("x-api-key", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if any(hmac.compare_digest(given_bytes, key) for key in self.keys):
            return await continuation(handler_call_details)
        self.rejected.labels(method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()

        @contextlib.asynccontextmanager
        async def deny(context: grpc.aio.ServicerContext):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-api-key metadata")
            yield

        return _wrap(await continuation(handler_call_details), deny)


class InFlightLimiter(grpc.aio.ServerInterceptor):
    """At most `limit` requests in flight (RESOURCE_EXHAUSTED beyond), tracked in `gauge`."""

    def __init__(self, limit: int, gauge: Gauge, rejected: Counter) -> None:
        self.limit = limit
        self.gauge = gauge
        self.rejected = rejected
        self.in_flight = 0

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method.startswith(ApiKeyInterceptor.OPEN_PREFIXES):
            return handler

        @contextlib.asynccontextmanager
        async def limit(context: grpc.aio.ServicerContext):
            if self.in_flight >= self.limit:
                self.rejected.labels(method.rsplit("/", 1)[-1], "RESOURCE_EXHAUSTED").inc()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {self.limit} in flight")
            self.in_flight += 1
            self.gauge.set(self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
                self.gauge.set(self.in_flight)

        return _wrap(handler, limit)
