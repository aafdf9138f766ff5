"""gRPC plumbing shared by the services: an interceptor that maps domain errors to status codes and
times every RPC, and the serve loop with health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
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
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        interceptor = self

        async def fail(exc: BaseException, context: grpc.aio.ServicerContext) -> None:
            code = interceptor._code_for(exc)
            if code is None:
                log.exception("%s failed", method)
                code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
            else:
                message = str(exc)
            interceptor.rejected.labels(method, code.name).inc()
            await context.abort(code, message)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                begin = time.perf_counter()
                try:
                    return await inner(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(exc, context)
                finally:
                    interceptor.request_seconds.labels(method).observe(time.perf_counter() - begin)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                begin = time.perf_counter()
                try:
                    async for response in inner_stream(request, context):
                        yield response
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(exc, context)
                finally:
                    interceptor.request_seconds.labels(method).observe(time.perf_counter() - begin)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            inner_bidi = handler.stream_stream

            async def stream_stream(request_iterator, context):
                begin = time.perf_counter()
                try:
                    async for response in inner_bidi(request_iterator, context):
                        yield response
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(exc, context)
                finally:
                    interceptor.request_seconds.labels(method).observe(time.perf_counter() - begin)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


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
        handler = await continuation(handler_call_details)
        return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-api-key metadata")


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
        if handler is None or method.startswith(ApiKeyInterceptor.OPEN_PREFIXES):
            return handler
        limiter = self

        def wrap(inner, streaming: bool):
            async def unary(request, context):
                if limiter.in_flight >= limiter.limit:
                    limiter.rejected.labels(method.rsplit("/", 1)[-1], "RESOURCE_EXHAUSTED").inc()
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {limiter.limit} in flight"
                    )
                limiter.in_flight += 1
                limiter.gauge.set(limiter.in_flight)
                try:
                    return await inner(request, context)
                finally:
                    limiter.in_flight -= 1
                    limiter.gauge.set(limiter.in_flight)

            async def stream(request, context):
                if limiter.in_flight >= limiter.limit:
                    limiter.rejected.labels(method.rsplit("/", 1)[-1], "RESOURCE_EXHAUSTED").inc()
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {limiter.limit} in flight"
                    )
                limiter.in_flight += 1
                limiter.gauge.set(limiter.in_flight)
                try:
                    async for response in inner(request, context):
                        yield response
                finally:
                    limiter.in_flight -= 1
                    limiter.gauge.set(limiter.in_flight)

            return stream if streaming else unary

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **kwargs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **kwargs)
        return handler


def _deny(handler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind as `handler` that rejects every call."""
    if handler is None:
        return None

    async def deny(request, context):
        await context.abort(code, message)

    async def deny_stream(request, context):
        await context.abort(code, message)
        yield  # an async generator, as streaming handlers must be

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
