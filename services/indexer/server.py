"""Composition root of an indexer shard: gRPC server, interceptors, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import logging

import grpc
from prometheus_client import start_http_server

from semsearch.core.durable import DirectoryLock
from semsearch.rpc import ErrorMappingInterceptor, method_names, serve, server_options
from semsearch.v1 import indexer_pb2, indexer_pb2_grpc
from services.indexer import metrics
from services.indexer.config import ShardSettings
from services.indexer.servicer import CatalogSync, IndexerServicer
from services.indexer.shard import Shard

log = logging.getLogger(__name__)


def build_server(settings: ShardSettings, shard: Shard, sync: CatalogSync) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[
            ErrorMappingInterceptor(
                metrics.REQUEST_SECONDS,
                metrics.REJECTED,
                method_names([indexer_pb2.DESCRIPTOR.services_by_name["Indexer"]]),
            )
        ],
        options=server_options(settings.max_message_bytes),
    )
    indexer_pb2_grpc.add_IndexerServicer_to_server(IndexerServicer(shard, settings, sync), server)
    return server


async def run(settings: ShardSettings) -> None:
    """Serve one shard until SIGTERM/SIGINT; the data loads while health says NOT_SERVING."""
    # One writer per data directory: a second process on it exits here, before reading anything.
    lock = DirectoryLock(settings.data_dir, "indexer shard").acquire()
    shard = Shard(settings)
    sync = CatalogSync(shard, settings)
    server = build_server(settings, shard, sync)
    start_http_server(settings.metrics_port, addr=settings.host)
    loop = asyncio.get_running_loop()
    maintenance: list[asyncio.Task] = []

    async def load() -> None:
        await loop.run_in_executor(None, shard.load)
        # A shard that was down while collections were created or dropped converges before it serves.
        await sync.pull()
        maintenance.append(asyncio.create_task(shard.run_maintenance()))
        maintenance.append(asyncio.create_task(shard.run_auto_train()))
        maintenance.append(asyncio.create_task(sync.run()))

    async def close() -> None:
        for task in maintenance:
            task.cancel()
        await loop.run_in_executor(None, shard.close)

    service = indexer_pb2.DESCRIPTOR.services_by_name["Indexer"].full_name
    log.info(
        "shard %d/%d, data %s, collections %s, catalog %s, metrics on :%d",
        settings.shard, settings.num_shards, settings.data_dir,
        ", ".join(sorted(shard.catalog.entries)) or "none",
        "owned here" if shard.owner else f"kept by shard 0 ({settings.peers[0]})", settings.metrics_port,
    )  # fmt: skip

    async def ready() -> bool:
        # After a failed fsync or apply a collection takes no writes until a restart: not ready.
        return shard.writable

    try:
        await serve(
            server, f"{settings.host}:{settings.port}", [service], load=load, close=close, readiness=ready
        )
    finally:
        lock.release()
