"""Composition root of the gateway: clients of Triton, Redis and shards; interceptors; serving."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import redis.asyncio as aioredis
from prometheus_client import start_http_server

from semsearch.rpc import (
    ApiKeyInterceptor,
    ErrorMappingInterceptor,
    InFlightLimiter,
    method_names,
    serve,
    server_options,
)
from semsearch.v1 import search_pb2, search_pb2_grpc
from services.gateway import metrics
from services.gateway.cache import Cache
from services.gateway.config import GatewaySettings
from services.gateway.embedder_client import EmbedderClient
from services.gateway.service import GatewayService
from services.gateway.servicer import SearchServicer
from services.gateway.shard_client import ShardClient, ShardMisconfigured
from services.gateway.workers import stop_when_orphaned, worker_index

log = logging.getLogger(__name__)


def build_service(settings: GatewaySettings) -> GatewayService:
    shards = [ShardClient(i, len(settings.shards), address) for i, address in enumerate(settings.shards)]
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
    methods = method_names([search_pb2.DESCRIPTOR.services_by_name["Search"]])
    interceptors = [
        ApiKeyInterceptor(settings.api_keys, metrics.ERRORS, methods),
        InFlightLimiter(settings.max_in_flight, metrics.IN_FLIGHT, metrics.ERRORS, methods),
        ErrorMappingInterceptor(metrics.REQUEST_SECONDS, metrics.ERRORS, methods),
    ]
    options = server_options(settings.max_message_bytes, reuse_port=settings.workers > 1)
    server = grpc.aio.server(interceptors=interceptors, options=options)
    search_pb2_grpc.add_SearchServicer_to_server(SearchServicer(service), server)
    return server


async def run(settings: GatewaySettings) -> None:
    service = build_service(settings)
    server = build_server(settings, service)
    worker = worker_index()
    if worker is None:
        start_http_server(settings.metrics_port, addr=settings.host)
    # else: the supervisor serves every worker's metrics (services/gateway/workers.py).

    tasks: list[asyncio.Task] = []
    if worker is not None:  # watched from the start: a worker may still be loading when its supervisor dies
        tasks.append(asyncio.create_task(stop_when_orphaned()))

    async def load() -> None:
        # Nothing to wait for: the process works at once (liveness); readiness follows the shards.
        # A shard list in the wrong order or of the wrong length is a configuration error: refuse to
        # start rather than store items where no search will look for them.
        shard_stats = await asyncio.gather(*(s.stats(2.0) for s in service.shards), return_exceptions=True)
        for shard, stats in zip(service.shards, shard_stats):
            if isinstance(stats, ShardMisconfigured):
                raise RuntimeError(f"SEMSEARCH_SHARDS is wrong: {stats}")
            if isinstance(stats, Exception):
                log.warning("%s does not answer yet (%s)", shard.name, stats)
        await service.catalog.refresh()
        tasks.append(asyncio.create_task(service.catalog.run()))

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
        "gateway%s: %d shards, triton %s, redis %s",
        "" if worker is None else f" worker {worker}",
        len(settings.shards),
        settings.triton_url,
        settings.redis_url,
    )
    service_name = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
    health_address = f"{settings.host}:{settings.health_port}" if settings.health_port else ""
    await serve(server, address, [service_name], load=load, close=close, readiness=service.ready,
                health_address=health_address)  # fmt: skip
