"""Composition root of the gateway: clients of Triton, Redis and shards; interceptors; serving."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import redis.asyncio as aioredis
from prometheus_client import start_http_server

from semsearch.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from semsearch.rpc import ApiKeyInterceptor, ErrorMappingInterceptor, InFlightLimiter, serve, server_options
from semsearch.v1 import search_pb2, search_pb2_grpc
from services.embedder.client import EmbedderClient
from services.gateway import metrics
from services.gateway.cache import Cache
from services.gateway.config import GatewaySettings
from services.gateway.service import GatewayService
from services.gateway.servicer import SearchServicer
from services.gateway.shard_client import ShardClient

log = logging.getLogger(__name__)

ERROR_CODES = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}
AUTO_TRAIN_INTERVAL_S = 10.0


def build_service(settings: GatewaySettings) -> GatewayService:
    shards = [ShardClient(i, address) for i, address in enumerate(settings.shards)]
    embedder = EmbedderClient(settings.triton_url, decode_executor=ThreadPoolExecutor(2, "decode"))
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    cache = Cache(
        client,
        embedding_ttl_s=settings.embedding_ttl_s,
        result_ttl_s=settings.result_ttl_s,
        max_result_bytes=settings.cache_max_result_bytes,
        timeout_s=settings.redis_timeout_s,
    )
    return GatewayService(settings, shards, embedder, cache)


def build_server(settings: GatewaySettings, service: GatewayService) -> grpc.aio.Server:
    interceptors = [
        ApiKeyInterceptor(settings.api_keys, metrics.ERRORS),
        InFlightLimiter(settings.max_in_flight, metrics.IN_FLIGHT, metrics.ERRORS),
        ErrorMappingInterceptor(ERROR_CODES, metrics.REQUEST_SECONDS, metrics.ERRORS),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings.max_message_bytes))
    search_pb2_grpc.add_SearchServicer_to_server(SearchServicer(service), server)
    return server


async def auto_train(service: GatewayService) -> None:
    """Train a collection once it reaches its threshold (exact search until then)."""
    from services.indexer.coordinator import train_collection

    loop = asyncio.get_running_loop()
    # Collections this gateway trained: their shards may still be rebuilding (and so still report
    # "exact") long after the template was installed; training again would waste minutes of CPU.
    trained: set[str] = set()
    while True:
        await asyncio.sleep(AUTO_TRAIN_INTERVAL_S)
        try:
            infos = await service.list_collections(5.0)
            for info in infos:
                config = service.collections[info["name"]]
                untrained = (
                    info["index"] == "exact"
                    and info["shards_answered"] == info["shards_total"]
                    and config.name not in trained
                )
                if untrained and info["count"] >= config.train_threshold:
                    log.info("collection %s reached %d vectors: training %s", config.name, info["count"],
                             config.factory)  # fmt: skip
                    channels = [grpc.insecure_channel(s.address, options=[
                        ("grpc.max_send_message_length", 256 << 20)]) for s in service.shards]  # fmt: skip
                    try:
                        trained.add(config.name)
                        report = await loop.run_in_executor(None, train_collection, channels, config)
                        log.info("collection %s: template installed, rebuilding to generations %s",
                                 config.name, report["next_generations"])  # fmt: skip
                    except Exception:
                        trained.discard(config.name)  # try again at the next check
                        raise
                    finally:
                        for channel in channels:
                            channel.close()
        except Exception:
            log.exception("auto-train check failed; retrying in %.0fs", AUTO_TRAIN_INTERVAL_S)


async def run(settings: GatewaySettings) -> None:
    service = build_service(settings)
    server = build_server(settings, service)
    start_http_server(settings.metrics_port, addr=settings.host)
    tasks: list[asyncio.Task] = []

    async def load() -> None:
        # SERVING once Triton and every shard answer; until then health says NOT_SERVING.
        deadline = asyncio.get_running_loop().time() + 600
        while not await service.ready():
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("Triton or shards not reachable after 600s")
            await asyncio.sleep(0.5)
        tasks.append(asyncio.create_task(auto_train(service)))

    async def close() -> None:
        for task in tasks:
            task.cancel()
        await service.cache.close()
        await service.embedder.close()
        for shard in service.shards:
            await shard.close()

    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert and settings.tls_key:
        credentials = grpc.ssl_server_credentials(
            [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
        )
        server.add_secure_port(address, credentials)
        address = ""
    log.info(
        "gateway: %d shards, triton %s, redis %s",
        len(settings.shards),
        settings.triton_url,
        settings.redis_url,
    )
    service_name = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
    await serve(server, address, [service_name], load=load, close=close, health_check=service.ready)
