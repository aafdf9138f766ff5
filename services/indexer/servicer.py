"""The Indexer gRPC servicer: protobuf <-> domain types; errors are mapped by the interceptor."""

from __future__ import annotations

import asyncio
from functools import partial

import grpc
import numpy as np

from semsearch.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from semsearch.core.routing import shard_for
from semsearch.v1 import indexer_pb2, indexer_pb2_grpc
from services.indexer import metrics
from services.indexer.collection import MAX_K
from services.indexer.config import ShardSettings
from services.indexer.shard import Shard

DEFAULT_K = 10
MAX_RERANK = 20_000
SAMPLE_CHUNK_BYTES = 2 * 1024 * 1024  # under gRPC's default 4 MB receive limit


def vectors_from(messages, dim: int, field: str) -> np.ndarray:
    """[n, dim] float32 from repeated Vector messages; a wrong length names the item."""
    for i, v in enumerate(messages):
        if len(v.values) != dim:
            raise InvalidArgument(f"expected {dim} values, got {len(v.values)}", f"{field}[{i}]")
    return np.array([v.values for v in messages], dtype=np.float32).reshape(len(messages), dim)


class IndexerServicer(indexer_pb2_grpc.IndexerServicer):
    def __init__(self, shard: Shard, settings: ShardSettings) -> None:
        self.shard = shard
        self.settings = settings

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    def _ready_collection(self, name: str):
        if not self.shard.loaded:
            raise Unavailable("shard is loading its data, retry shortly")
        return self.shard.collection(name)

    def _check_route(self, request) -> None:
        """A request routed for another shard number or count means the caller's shard list is wrong."""
        if not request.HasField("route"):
            return
        route = request.route
        if (route.shard, route.num_shards) != (self.settings.shard, self.settings.num_shards):
            raise FailedPrecondition(
                f"this is shard {self.settings.shard} of {self.settings.num_shards}, but the request was "
                f"routed to shard {route.shard} of {route.num_shards}: the caller's shard list is misordered "
                "or stale"
            )

    def _routed(self, request):
        """The collection of a routed request, checked for readiness and route."""
        collection = self._ready_collection(request.collection)
        self._check_route(request)
        return collection

    def _check_size(self, n: int, field: str) -> None:
        if n > self.settings.max_request_items:
            raise InvalidArgument(
                f"{n} entries, more than the limit of {self.settings.max_request_items}", field
            )

    async def Upsert(
        self, request: indexer_pb2.ShardUpsertRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.WriteResponse:
        collection = self._routed(request)
        self._check_size(len(request.items), "items")
        if not request.items:
            raise InvalidArgument("no items", "items")
        dim = collection.config.dim
        for i, item in enumerate(request.items):
            if len(item.vector.values) != dim:
                raise InvalidArgument(
                    f"expected {dim} values, got {len(item.vector.values)}", f"items[{i}].vector"
                )
            if (
                request.HasField("route")
                and shard_for(item.id, self.settings.num_shards) != self.settings.shard
            ):
                raise FailedPrecondition(
                    f"id {item.id!r} belongs to shard {shard_for(item.id, self.settings.num_shards)}, "
                    f"not to shard {self.settings.shard}",
                    f"items[{i}].id",
                )

        def write() -> tuple[int, int]:
            # Off the event loop: converting thousands of vectors takes tens of milliseconds.
            vectors = vectors_from([item.vector for item in request.items], dim, "items.vector")
            ids = [item.id for item in request.items]
            metadata = [dict(item.metadata) for item in request.items]
            return collection.upsert(ids, vectors, metadata)

        lsn, version = await self._blocking(write)
        metrics.WRITES.labels(collection.name, "upsert").inc(len(request.items))
        return indexer_pb2.WriteResponse(count=len(request.items), lsn=lsn, data_version=version)

    async def Delete(
        self, request: indexer_pb2.ShardDeleteRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.WriteResponse:
        collection = self._routed(request)
        self._check_size(len(request.ids), "ids")
        count, missing, lsn, version = await self._blocking(collection.delete, list(request.ids))
        metrics.WRITES.labels(collection.name, "delete").inc(count)
        return indexer_pb2.WriteResponse(count=count, lsn=lsn, data_version=version, missing=missing)

    async def Search(
        self, request: indexer_pb2.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.ShardSearchResponse:
        collection = self._routed(request)
        self._check_size(len(request.queries), "queries")
        self._check_size(len(request.exclude_ids), "exclude_ids")
        k = request.k or DEFAULT_K
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"must be in [1, {MAX_K}], got {k}", "k")
        if not 0 <= request.recall_target <= 1 or np.isnan(request.recall_target):
            raise InvalidArgument(f"must be in (0, 1], got {request.recall_target}", "recall_target")
        if request.nprobe > 65_536:
            raise InvalidArgument(f"must be <= 65536, got {request.nprobe}", "nprobe")
        depth = request.rerank or collection.config.rerank_depth(k)
        if request.rerank and not k <= request.rerank <= MAX_RERANK:
            raise InvalidArgument(f"must be in [k={k}, {MAX_RERANK}], got {request.rerank}", "rerank")
        if not request.queries:
            raise InvalidArgument("no queries", "queries")
        queries = collection.validate_vectors(
            vectors_from(request.queries, collection.config.dim, "queries"), "queries"
        )
        exclude = set(request.exclude_ids)
        # Excluded items may be among the nearest: fetch enough that k others remain.
        fetch_k = k + len(exclude)
        collection.check_search_budget(fetch_k, max(depth, fetch_k))
        nprobe = collection.resolve_nprobe(request.nprobe, request.recall_target)
        result = await self.shard.batchers[collection.name].search(
            queries, fetch_k, nprobe, max(depth, fetch_k)
        )
        outcome = result.outcome
        response = indexer_pb2.ShardSearchResponse(
            generation=outcome.generation,
            data_version=collection.data_version,
            index=outcome.index,
            nprobe=outcome.nprobe,
            batch_size=result.batch_queries,
        )
        for row in range(result.start, result.end):
            hits = response.results.add().hits
            for score, slot in zip(outcome.scores[row].tolist(), outcome.slots[row].tolist()):
                if slot < 0 or len(hits) == k:
                    break
                item_id, meta = outcome.items.item(slot)
                if item_id not in exclude:
                    hits.add(id=item_id, score=score, metadata=meta)
        return response

    async def Get(
        self, request: indexer_pb2.ShardGetRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.ShardGetResponse:
        collection = self._routed(request)
        self._check_size(len(request.ids), "ids")
        if not request.ids:
            raise InvalidArgument("no ids", "ids")
        found, missing = collection.get(list(request.ids))
        response = indexer_pb2.ShardGetResponse(missing=missing)
        for item_id, vector, meta in found:
            item = response.items.add(id=item_id, metadata=meta)
            if request.include_vectors:
                item.vector.values.extend(vector.tolist())
        return response

    async def Stats(
        self, request: indexer_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.StatsResponse:
        response = indexer_pb2.StatsResponse(
            shard=self.settings.shard,
            num_shards=self.settings.num_shards,
            disk_free_bytes=self.shard.disk_free(),
        )
        for c in self.shard.collections.values():
            loaded = self.shard.loaded
            response.collections.add(
                name=c.name,
                dim=c.config.dim,
                count=c.count,
                generation=c.generation,
                index=c.index_name,
                factory=c.config.factory,
                data_version=c.data_version,
                lsn=c.lsn,
                rebuild_progress=c.rebuild_progress if c.rebuilding else 0.0,
                rebuilding=c.rebuilding,
                log_bytes=c.wal.size_bytes if loaded else 0,
                index_bytes=c.index_bytes() if loaded else 0,
                rows=c.items.rows,
                disk_bytes=c.disk_bytes() if loaded else 0,
                broken=c.broken or "",
                rebuild_failures=c.rebuild_failures,
                template_id=c.installed_template_id if loaded else "",
            )
        return response

    async def Sample(self, request: indexer_pb2.SampleRequest, context: grpc.aio.ServicerContext):
        collection = self._ready_collection(request.collection)
        if request.n < 1:
            raise InvalidArgument("must be >= 1", "n")
        sample = await self._blocking(collection.sample, request.n, request.seed)
        rows = max(1, SAMPLE_CHUNK_BYTES // (4 * collection.config.dim))
        for start in range(0, len(sample), rows):
            chunk = np.ascontiguousarray(sample[start : start + rows], dtype="<f4")
            yield indexer_pb2.VectorChunk(rows=len(chunk), dim=collection.config.dim, data=chunk.tobytes())

    async def InstallTemplate(
        self, request: indexer_pb2.InstallTemplateRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.InstallTemplateResponse:
        collection = self._ready_collection(request.collection)
        table = [(e.nprobe, e.recall) for e in request.nprobe_table]
        generation = await self._blocking(collection.install_template, request.index, request.factory, table)
        return indexer_pb2.InstallTemplateResponse(next_generation=generation)

    async def Snapshot(
        self, request: indexer_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.SnapshotResponse:
        if not self.shard.loaded:
            raise Unavailable("shard is loading its data, retry shortly")
        done = await self._blocking(self.shard.snapshot_all)
        return indexer_pb2.SnapshotResponse(collections=done)

    async def Train(
        self, request: indexer_pb2.TrainRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.TrainResponse:
        self._ready_collection(request.collection)
        trainer = self.shard.trainer
        if trainer is None:
            raise FailedPrecondition(
                f"this is shard {self.settings.shard}: shard 0, with SEMSEARCH_PEERS set, coordinates "
                "training"
            )
        report = await self._blocking(partial(trainer.train, request.collection, retrain=request.retrain))
        return indexer_pb2.TrainResponse(
            vectors=report["vectors"],
            train_vectors=report["train_vectors"],
            seconds=report["seconds"],
            default_nprobe=report["default_nprobe"],
            next_generations=report["next_generations"],
            nprobe_table=[indexer_pb2.NprobeRecall(nprobe=n, recall=r) for n, r in report["nprobe_table"]],
        )

    async def Compact(
        self, request: indexer_pb2.CompactRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.CompactResponse:
        collection = self._ready_collection(request.collection)
        await self._blocking(collection.compact)
        return indexer_pb2.CompactResponse(generation=collection.generation, rows=collection.items.rows)
