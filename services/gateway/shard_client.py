"""Async gRPC client of one indexer shard, returning domain values (no protobuf leaks out)."""

from __future__ import annotations

import grpc
import numpy as np

from semsearch.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc
from services.gateway.fanout import Hit, ShardHits

# Reconnect within a second of a shard coming back (the gRPC default backoff grows to 2 minutes).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]


class ShardClient:
    """Calls one shard; gRPC errors come out as semsearch.errors exceptions naming the shard."""

    def __init__(self, shard: int, address: str) -> None:
        self.shard = shard
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = indexer_pb2_grpc.IndexerStub(self.channel)

    async def search(
        self, collection: str, queries: np.ndarray, k: int, nprobe: int, recall_target: float, timeout: float
    ) -> ShardHits:
        request = indexer_pb2.ShardSearchRequest(
            collection=collection,
            queries=[common_pb2.Vector(values=q.tolist()) for q in queries],
            k=k,
            nprobe=nprobe,
            recall_target=recall_target,
        )
        response = await self._rpc(self.stub.Search(request, timeout=timeout))
        hits = [[Hit(h.id, h.score, dict(h.metadata)) for h in r.hits] for r in response.results]
        return ShardHits(hits, response.generation, response.data_version)

    async def upsert(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, str]],
        timeout: float,
    ) -> int:
        items = [
            common_pb2.Item(id=i, vector=common_pb2.Vector(values=v.tolist()), metadata=m)
            for i, v, m in zip(ids, vectors, metadata)
        ]
        response = await self._rpc(
            self.stub.Upsert(
                indexer_pb2.ShardUpsertRequest(collection=collection, items=items), timeout=timeout
            )
        )
        return response.data_version

    async def delete(self, collection: str, ids: list[str], timeout: float) -> int:
        request = indexer_pb2.ShardDeleteRequest(collection=collection, ids=ids, ignore_missing=True)
        response = await self._rpc(self.stub.Delete(request, timeout=timeout))
        return response.count

    async def get(
        self, collection: str, ids: list[str], include_vectors: bool, timeout: float
    ) -> tuple[list[tuple[str, np.ndarray | None, dict[str, str]]], list[str]]:
        response = await self._rpc(
            self.stub.Get(
                indexer_pb2.ShardGetRequest(collection=collection, ids=ids, include_vectors=include_vectors),
                timeout=timeout,
            )
        )
        items = [
            (
                it.id,
                np.array(it.vector.values, dtype=np.float32) if include_vectors else None,
                dict(it.metadata),
            )
            for it in response.items
        ]
        return items, list(response.missing)

    async def stats(self, timeout: float) -> indexer_pb2.StatsResponse:
        return await self._rpc(self.stub.Stats(indexer_pb2.StatsRequest(), timeout=timeout))

    async def _rpc(self, call):
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            where = f"shard {self.shard} ({self.address})"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"{where} missed the deadline") from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(details) from exc
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(details) from exc
            raise Unavailable(f"{where}: {code.name} {details}") from exc

    async def close(self) -> None:
        await self.channel.close()
