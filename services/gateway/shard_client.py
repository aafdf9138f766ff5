"""Async gRPC client of one indexer shard: returns domain values (services/gateway/domain.py), and
failures as semsearch.core.errors exceptions worded for the public API (a shard number, never an
address)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np

from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from semsearch.rpc import CHANNEL_OPTIONS
from semsearch.specs import config_from_spec, spec_from_config
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc
from services.gateway.coalesce import SearchCoalescer, SearchOptions
from services.gateway.domain import Hit, ShardCollection, ShardHits, ShardInfo

log = logging.getLogger(__name__)


class ShardMismatch(ServiceError):
    """The shard refused a request the gateway had validated: a bug or a configuration mismatch
    (INTERNAL for the client; the shard's own message goes to the log)."""


class ShardMisconfigured(Unavailable):
    """The process at a shard's address says it is another shard, or of another shard count."""


@dataclass(frozen=True)
class Catalog:
    """The collections a shard knows (its copy of the catalog) and the catalog's version."""

    version: int
    collections: dict[str, CollectionConfig]


def _catalog(message: indexer_pb2.CatalogMessage) -> Catalog:
    configs = [config_from_spec(entry.spec) for entry in message.collections]
    return Catalog(message.version, {c.name: c for c in configs})


def hits_of(response: indexer_pb2.ShardSearchResponse, queries: int) -> list[list[Hit]]:
    """Each query's hits from the packed fields of a search response, or from its Hit messages (a
    shard from before packed answers ignores `packed`: a rolling upgrade meets one). ValueError when
    the fields disagree."""
    if not response.hit_counts and len(response.results) == queries:
        return [[Hit(h.id, h.score, dict(h.metadata), h.payload) for h in r.hits] for r in response.results]
    counts, ids, metadata = response.hit_counts, response.hit_ids, response.hit_metadata
    scores = np.frombuffer(response.hit_scores, dtype="<f4").tolist()
    payloads = response.hit_payloads or [b""] * len(ids)
    total = len(ids)
    if len(counts) != queries or sum(counts) != total:
        raise ValueError(
            f"{len(counts)} hit counts summing to {sum(counts)} for {queries} queries, {total} ids"
        )
    if not len(scores) == len(metadata) == len(payloads) == total:
        raise ValueError(
            f"{total} ids, {len(scores)} scores, {len(metadata)} metadata, {len(payloads)} payloads"
        )
    hits = [
        Hit(i, s, json.loads(m) if m != "{}" else {}, p)
        for i, s, m, p in zip(ids, scores, metadata, payloads)
    ]
    out, start = [], 0
    for count in counts:
        out.append(hits[start : start + count])
        start += count
    return out


class ShardClient:
    """Calls shard `shard` of `num_shards`; every request carries that route, so a shard listed in the
    wrong place refuses it instead of storing items where no one will look for them."""

    def __init__(self, shard: int, num_shards: int, address: str) -> None:
        self.shard = shard
        self.num_shards = num_shards
        self.address = address
        self.route = indexer_pb2.ShardRoute(shard=shard, num_shards=num_shards)
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = indexer_pb2_grpc.IndexerStub(self.channel)
        self.coalescer = SearchCoalescer(
            lambda options, queries, timeout: self._search(options, queries, timeout, [])
        )

    @property
    def name(self) -> str:
        return f"shard {self.shard} of {self.num_shards}"

    async def search(
        self,
        collection: str,
        queries: np.ndarray,
        k: int,
        nprobe: int,
        recall_target: float,
        timeout: float,
        exclude_ids: list[str] | None = None,
        include_payloads: bool = False,
        where: str = "",
        exact: bool = False,
    ) -> ShardHits:
        """Top-k hits of each query. Single queries without exclusions that arrive while a request of
        the same options is in flight join the next request (SearchCoalescer)."""
        options = SearchOptions(collection, k, nprobe, recall_target, include_payloads, where, exact)
        if len(queries) == 1 and not exclude_ids:
            return await self.coalescer.search(options, queries[0], timeout)
        return await self._search(options, queries, timeout, exclude_ids or [])

    async def _search(
        self, options: SearchOptions, queries: np.ndarray, timeout: float, exclude_ids: list[str]
    ) -> ShardHits:
        request = indexer_pb2.ShardSearchRequest(
            collection=options.collection,
            query_matrix=np.ascontiguousarray(queries, dtype="<f4").tobytes(),
            k=options.k,
            nprobe=options.nprobe,
            recall_target=options.recall_target,
            exclude_ids=exclude_ids,
            route=self.route,
            include_payloads=options.include_payloads,
            filter=options.where,
            exact=options.exact,
            packed=True,
        )
        begin = time.perf_counter()
        response = await self._rpc(self.stub.Search(request, timeout=max(timeout, 0.001)))
        try:
            hits = hits_of(response, len(queries))
        except ValueError as exc:
            log.error("%s answered a malformed search response: %s", self.name, exc)
            raise ShardMismatch(f"{self.name} answered a malformed search response") from exc
        info = ShardInfo(self.shard, response.plan, response.depth, response.matched, response.batch_size,
                         time.perf_counter() - begin)  # fmt: skip
        return ShardHits(hits, response.generation, info)

    async def upsert(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, str]],
        payloads: list[bytes],
        timeout: float,
    ) -> int:
        items = [
            common_pb2.Item(id=i, vector=common_pb2.Vector(values=v.tolist()), metadata=m, payload=p)
            for i, v, m, p in zip(ids, vectors, metadata, payloads)
        ]
        request = indexer_pb2.ShardUpsertRequest(collection=collection, items=items, route=self.route)
        response = await self._rpc(self.stub.Upsert(request, timeout=timeout))
        return response.data_version

    async def delete(self, collection: str, ids: list[str], timeout: float) -> tuple[int, list[str]]:
        """(deleted, ids that were not stored)."""
        request = indexer_pb2.ShardDeleteRequest(collection=collection, ids=ids, route=self.route)
        response = await self._rpc(self.stub.Delete(request, timeout=timeout))
        return response.count, list(response.missing)

    async def get(
        self,
        collection: str,
        ids: list[str],
        include_vectors: bool,
        timeout: float,
        include_payloads: bool = False,
    ) -> tuple[list[tuple[str, np.ndarray | None, dict[str, str], bytes]], list[str]]:
        request = indexer_pb2.ShardGetRequest(
            collection=collection,
            ids=ids,
            include_vectors=include_vectors,
            route=self.route,
            include_payloads=include_payloads,
        )
        response = await self._rpc(self.stub.Get(request, timeout=timeout))
        items = [
            (
                it.id,
                np.array(it.vector.values, dtype=np.float32) if include_vectors else None,
                dict(it.metadata),
                it.payload,
            )
            for it in response.items
        ]
        return items, list(response.missing)

    async def create_collection(self, config: CollectionConfig, timeout: float) -> Catalog:
        """Create a collection through this shard (the catalog's owner)."""
        request = indexer_pb2.ShardCreateCollectionRequest(spec=spec_from_config(config))
        return _catalog(await self._catalog_rpc(self.stub.CreateCollection(request, timeout=timeout)))

    async def drop_collection(self, name: str, timeout: float) -> Catalog:
        request = indexer_pb2.ShardDropCollectionRequest(name=name)
        return _catalog(await self._catalog_rpc(self.stub.DropCollection(request, timeout=timeout)))

    async def catalog(self, timeout: float) -> Catalog:
        return _catalog(await self._rpc(self.stub.GetCatalog(indexer_pb2.CatalogRequest(), timeout=timeout)))

    async def _catalog_rpc(self, call):
        """Catalog changes: the shard's own errors (bad settings, exists, unknown) are the caller's."""
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(exc.details() or "") from exc
            if code == grpc.StatusCode.ALREADY_EXISTS:
                raise AlreadyExists(exc.details() or "") from exc
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(exc.details() or "") from exc
            raise Unavailable(f"{self.name}, which keeps the collection catalog, is unavailable") from exc

    async def stats(self, timeout: float) -> list[ShardCollection]:
        """Every collection's state on this shard, after checking the shard is the one expected here."""
        response = await self._rpc(self.stub.Stats(indexer_pb2.StatsRequest(), timeout=timeout))
        if (response.shard, response.num_shards) != (self.shard, self.num_shards):
            log.error(
                "%s at %s says it is shard %d of %d: fix SEMSEARCH_SHARDS (shard order and count)",
                self.name, self.address, response.shard, response.num_shards,
            )  # fmt: skip
            raise ShardMisconfigured(
                f"{self.name} is misconfigured: the process at its address says it is shard {response.shard} "
                f"of {response.num_shards}"
            )
        return [
            ShardCollection(
                c.name,
                c.count,
                c.generation,
                c.index,
                c.rows,
                c.disk_bytes,
                c.memory_bytes,
                c.rebuilding,
                c.rebuild_progress,
                c.template_id,
                c.drift,
                c.estimated_recall,
                c.recall_samples,
            )
            for c in response.collections
        ]

    async def sample_items(
        self, collection: str, n: int, seed: int, timeout: float
    ) -> AsyncIterator[tuple[list[str], np.ndarray, list[dict[str, str]]]]:
        """Up to n random live items of this shard's slice, in chunks of (ids, vectors, metadata)."""
        request = indexer_pb2.SampleRequest(collection=collection, n=n, seed=seed, include_items=True)
        try:
            async for chunk in self.stub.Sample(request, timeout=timeout):
                vectors = np.frombuffer(chunk.data, dtype="<f4").reshape(chunk.rows, chunk.dim)
                yield list(chunk.ids), vectors, [json.loads(m) for m in chunk.metadata]
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc

    async def _rpc(self, call):
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: grpc.aio.AioRpcError) -> Exception:
        """The domain error for a failed call to this shard."""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"{self.name} missed the deadline")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(f"{self.name}: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            # Collections come and go: one dropped (or not created yet) while this request travelled.
            return NotFound(details.removeprefix("collection: ") or "unknown collection", "collection")
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            log.error("%s at %s refused a validated request: %s %s", self.name, self.address, code.name,
                      details)  # fmt: skip
            return ShardMismatch(f"{self.name} refused the request")
        if code == grpc.StatusCode.UNAVAILABLE and "stopped taking writes" in details:
            return Unavailable(f"{self.name}: {details}")
        log.warning("%s at %s: %s %s", self.name, self.address, code.name, details)
        return Unavailable(f"{self.name} is unavailable")

    async def close(self) -> None:
        await self.channel.close()
