"""gRPC plumbing shared by the services: an interceptor that maps domain errors to status codes and
times every RPC, and the serve loop with health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

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
) -> None:
    """Start `server` on `address` with the standard health service (NOT_SERVING until `load()`
    finished, then SERVING) and reflection; on SIGTERM/SIGINT enter graceful shutdown, stop with
    `grace_s` for in-flight calls, then `close()`."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, reflection.SERVICE_NAME, health.SERVICE_NAME], server
    )
    if server.add_insecure_port(address) == 0:
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
    await stop.wait()
    log.info("shutting down: draining in-flight calls for up to %.0fs", grace_s)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    await close()
    log.info("stopped")
