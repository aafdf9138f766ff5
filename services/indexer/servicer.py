"""The Indexer gRPC servicer: protobuf <-> domain types; errors are mapped by the interceptor."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial

import grpc
import numpy as np

from semsearch.core import filters
from semsearch.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from semsearch.core.routing import shard_for
from semsearch.rpc import CHANNEL_OPTIONS
from semsearch.specs import config_from_spec, spec_from_config
from semsearch.v1 import indexer_pb2, indexer_pb2_grpc
from services.indexer import metrics
from services.indexer.catalog import Catalog, Entry
from services.indexer.collection import MAX_K, Collection
from services.indexer.config import ShardSettings
from services.indexer.shard import Shard

log = logging.getLogger(__name__)

DEFAULT_K = 10
MAX_RERANK = 20_000
MAX_PAYLOAD_BYTES = 64 * 1024
SAMPLE_CHUNK_BYTES = 2 * 1024 * 1024  # under gRPC's default 4 MB receive limit
# A shard that does not know a collection asks the owner at most this often.
PULL_ON_MISS_INTERVAL_S = 0.5


def vectors_from(messages, dim: int, field: str) -> np.ndarray:
    """[n, dim] float32 from repeated Vector messages; a wrong length names the item."""
    for i, v in enumerate(messages):
        if len(v.values) != dim:
            raise InvalidArgument(f"expected {dim} values, got {len(v.values)}", f"{field}[{i}]")
    return np.array([v.values for v in messages], dtype=np.float32).reshape(len(messages), dim)


def query_matrix(request: indexer_pb2.ShardSearchRequest, dim: int) -> np.ndarray:
    """The request's queries [n, dim] float32, from `query_matrix` bytes or `queries` messages."""
    if request.query_matrix:
        if request.queries:
            raise InvalidArgument("set either queries or query_matrix, not both", "queries")
        if len(request.query_matrix) % (4 * dim):
            raise InvalidArgument(
                f"{len(request.query_matrix)} bytes is not n x {dim} float32", "query_matrix"
            )
        matrix = np.frombuffer(request.query_matrix, dtype="<f4").reshape(-1, dim)
    else:
        matrix = vectors_from(request.queries, dim, "queries")
    if not len(matrix):
        raise InvalidArgument("no queries", "queries")
    return matrix.astype(np.float32, copy=False)


def catalog_message(catalog: Catalog) -> indexer_pb2.CatalogMessage:
    return indexer_pb2.CatalogMessage(
        version=catalog.version,
        collections=[
            indexer_pb2.CatalogEntry(spec=spec_from_config(e.config), incarnation=e.incarnation)
            for e in catalog.entries.values()
        ],
    )


def catalog_from(message: indexer_pb2.CatalogMessage) -> Catalog:
    entries = {}
    for item in message.collections:
        config = config_from_spec(item.spec)
        entries[config.name] = Entry(config, item.incarnation)
    return Catalog(message.version, entries)


class CatalogSync:
    """Keeps a shard's catalog in step with the owner's: the owner pushes after a change, the others pull
    at start, every `interval_s` and when asked for a collection they do not know."""

    def __init__(self, shard: Shard, settings: ShardSettings, interval_s: float = 2.0) -> None:
        self.shard = shard
        self.interval_s = interval_s
        self.me = f"{settings.host}:{settings.port}"
        peers = list(settings.peers)
        self.owner_address = peers[0] if peers and not shard.owner else None
        self.followers = [p for i, p in enumerate(peers) if i != settings.shard] if shard.owner else []
        self._last_pull = 0.0

    async def pull(self) -> bool:
        """Apply the owner's catalog if newer; False when the owner does not answer."""
        if self.owner_address is None:
            return True
        self._last_pull = time.monotonic()
        try:
            async with grpc.aio.insecure_channel(self.owner_address, options=CHANNEL_OPTIONS) as channel:
                message = await indexer_pb2_grpc.IndexerStub(channel).GetCatalog(
                    indexer_pb2.CatalogRequest(), timeout=5
                )
        except grpc.aio.AioRpcError as exc:
            log.debug("catalog pull from shard 0 failed: %s", exc.code().name)
            return False
        await asyncio.get_running_loop().run_in_executor(None, self.shard.apply, catalog_from(message))
        return True

    async def pull_on_miss(self) -> None:
        if self.owner_address and time.monotonic() - self._last_pull >= PULL_ON_MISS_INTERVAL_S:
            await self.pull()

    async def push(self) -> None:
        """Send the owner's catalog to every follower now (best effort: one that is down pulls later)."""
        message = catalog_message(self.shard.catalog)

        async def send(address: str) -> None:
            try:
                async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
                    await indexer_pb2_grpc.IndexerStub(channel).SyncCatalog(message, timeout=10)
            except grpc.aio.AioRpcError as exc:
                log.info(
                    "catalog push to %s failed (%s): it catches up when it answers", address, exc.code().name
                )

        await asyncio.gather(*(send(a) for a in self.followers))

    async def run(self) -> None:
        """Followers: pull until cancelled."""
        if self.owner_address is None:
            return
        while True:
            await self.pull()
            await asyncio.sleep(self.interval_s)


class IndexerServicer(indexer_pb2_grpc.IndexerServicer):
    def __init__(self, shard: Shard, settings: ShardSettings, sync: CatalogSync) -> None:
        self.shard = shard
        self.settings = settings
        self.sync = sync

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    async def _collection(self, name: str) -> Collection:
        if not self.shard.loaded:
            raise Unavailable("shard is loading its data, retry shortly")
        try:
            return self.shard.collection(name)
        except NotFound:
            await self.sync.pull_on_miss()  # created while this shard was down, or just now
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

    async def _routed(self, request) -> Collection:
        """The collection of a routed request, checked for readiness and route."""
        collection = await self._collection(request.collection)
        self._check_route(request)
        return collection

    def _check_size(self, n: int, field: str) -> None:
        if n > self.settings.max_request_items:
            raise InvalidArgument(
                f"{n} entries, more than the limit of {self.settings.max_request_items}", field
            )

    # --- items ----------------------------------------------------------------------------------------

    async def Upsert(
        self, request: indexer_pb2.ShardUpsertRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.WriteResponse:
        collection = await self._routed(request)
        self._check_size(len(request.items), "items")
        if not request.items:
            raise InvalidArgument("no items", "items")
        dim = collection.config.dim
        for i, item in enumerate(request.items):
            if len(item.vector.values) != dim:
                raise InvalidArgument(
                    f"expected {dim} values, got {len(item.vector.values)}", f"items[{i}].vector"
                )
            if len(item.payload) > MAX_PAYLOAD_BYTES:
                raise InvalidArgument(
                    f"{len(item.payload)} bytes, at most {MAX_PAYLOAD_BYTES}", f"items[{i}].payload"
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
            payloads = [item.payload or None for item in request.items]
            return collection.upsert(ids, vectors, metadata, payloads)

        lsn, version = await self._blocking(write)
        metrics.WRITES.labels(collection.name, "upsert").inc(len(request.items))
        return indexer_pb2.WriteResponse(count=len(request.items), lsn=lsn, data_version=version)

    async def Delete(
        self, request: indexer_pb2.ShardDeleteRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.WriteResponse:
        collection = await self._routed(request)
        self._check_size(len(request.ids), "ids")
        count, missing, lsn, version = await self._blocking(collection.delete, list(request.ids))
        metrics.WRITES.labels(collection.name, "delete").inc(count)
        return indexer_pb2.WriteResponse(count=count, lsn=lsn, data_version=version, missing=missing)

    async def Search(
        self, request: indexer_pb2.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.ShardSearchResponse:
        collection = await self._routed(request)
        self._check_size(len(request.exclude_ids), "exclude_ids")
        k = request.k or DEFAULT_K
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"must be in [1, {MAX_K}], got {k}", "k")
        if not 0 <= request.recall_target <= 1 or np.isnan(request.recall_target):
            raise InvalidArgument(f"must be in (0, 1], got {request.recall_target}", "recall_target")
        if request.nprobe > 65_536:
            raise InvalidArgument(f"must be <= 65536, got {request.nprobe}", "nprobe")
        if request.rerank and not k <= request.rerank <= MAX_RERANK:
            raise InvalidArgument(f"must be in [k={k}, {MAX_RERANK}], got {request.rerank}", "rerank")
        matrix = query_matrix(request, collection.config.dim)
        self._check_size(len(matrix), "queries")
        queries = collection.validate_vectors(matrix, "queries")
        exclude = set(request.exclude_ids)
        # Excluded items may be among the nearest: fetch enough that k others remain.
        fetch_k = k + len(exclude)
        rerank = max(request.rerank or collection.config.rerank_depth(k), fetch_k)
        collection.check_search_budget(fetch_k, rerank)
        where = filters.parse(request.filter)
        filters.check(where, collection.config.field_types, collection.name)
        depth = collection.resolve_depth(request.nprobe, request.recall_target)
        result = await self.shard.batchers[collection.name].search(
            queries, fetch_k, depth, rerank, where, request.recall_target, request.exact
        )
        outcome = result.outcome
        response = indexer_pb2.ShardSearchResponse(
            generation=outcome.generation,
            data_version=collection.data_version,
            index=outcome.index,
            nprobe=round(outcome.depth),
            batch_size=result.batch_queries,
            plan=outcome.plan,
            depth=outcome.depth,
            matched=outcome.matched,
        )
        rows = []
        for row in range(result.start, result.end):
            hits = []
            for score, slot in zip(outcome.scores[row].tolist(), outcome.slots[row].tolist()):
                if slot < 0 or len(hits) == k:
                    break
                item_id = outcome.items.ids[slot]
                if item_id not in exclude:
                    hits.append((item_id, score))
            rows.append(hits)
        ids = list({item_id for hits in rows for item_id, _ in hits})
        blobs = collection.payloads.payloads(ids) if request.include_payloads else {}
        if request.packed:
            metadata_json = collection.payloads.metadata_json(ids)
            flat = [hit for hits in rows for hit in hits]
            response.hit_counts.extend(len(hits) for hits in rows)
            response.hit_ids.extend(item_id for item_id, _ in flat)
            response.hit_scores = np.asarray([score for _, score in flat], dtype="<f4").tobytes()
            response.hit_metadata.extend(metadata_json.get(item_id, "{}") for item_id, _ in flat)
            if request.include_payloads:
                response.hit_payloads.extend(blobs.get(item_id, b"") for item_id, _ in flat)
            return response
        metadata = collection.payloads.metadata(ids)
        for hits in rows:
            results = response.results.add().hits
            for item_id, score in hits:
                results.add(
                    id=item_id,
                    score=score,
                    metadata=metadata.get(item_id, {}),
                    payload=blobs.get(item_id, b""),
                )
        return response

    async def Get(
        self, request: indexer_pb2.ShardGetRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.ShardGetResponse:
        collection = await self._routed(request)
        self._check_size(len(request.ids), "ids")
        if not request.ids:
            raise InvalidArgument("no ids", "ids")
        found, missing = await self._blocking(
            partial(collection.get, list(request.ids), payloads=request.include_payloads)
        )
        response = indexer_pb2.ShardGetResponse(missing=missing)
        for item_id, vector, meta, payload in found:
            item = response.items.add(id=item_id, metadata=meta, payload=payload or b"")
            if request.include_vectors:
                item.vector.values.extend(vector.tolist())
        return response

    # --- collections ----------------------------------------------------------------------------------

    async def CreateCollection(
        self, request: indexer_pb2.ShardCreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.CatalogMessage:
        config = config_from_spec(request.spec)
        if await self._blocking(self.shard.create, config):
            await self.sync.push()
        return catalog_message(self.shard.catalog)

    async def DropCollection(
        self, request: indexer_pb2.ShardDropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.CatalogMessage:
        await self._blocking(self.shard.drop, request.name)
        await self.sync.push()
        return catalog_message(self.shard.catalog)

    async def GetCatalog(
        self, request: indexer_pb2.CatalogRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.CatalogMessage:
        return catalog_message(self.shard.catalog)

    async def SyncCatalog(
        self, request: indexer_pb2.CatalogMessage, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.CatalogMessage:
        if self.shard.owner:
            raise FailedPrecondition(f"shard {self.settings.shard} owns its catalog")
        if not self.shard.loaded:
            raise Unavailable("shard is loading its data, retry shortly")
        await self._blocking(self.shard.apply, catalog_from(request))
        return catalog_message(self.shard.catalog)

    async def Stats(
        self, request: indexer_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.StatsResponse:
        response = indexer_pb2.StatsResponse(
            shard=self.settings.shard,
            num_shards=self.settings.num_shards,
            disk_free_bytes=self.shard.disk_free(),
            catalog_version=self.shard.catalog.version,
        )
        loaded = self.shard.loaded
        for c in list(self.shard.collections.values()):
            recall, samples = self.shard.monitor.estimate(c.name)
            response.collections.add(
                name=c.name,
                dim=c.config.dim,
                count=c.count,
                generation=c.generation,
                index=c.index_name,
                factory=c.factory,
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
                serving_template_id=c.template_id,
                memory_bytes=c.memory_bytes() if loaded else 0,
                metric=c.config.metric,
                drift=c.drift,
                estimated_recall=recall,
                recall_samples=samples,
            )
        return response

    # --- index lifecycle ------------------------------------------------------------------------------

    async def Sample(self, request: indexer_pb2.SampleRequest, context: grpc.aio.ServicerContext):
        collection = await self._collection(request.collection)
        if request.n < 1:
            raise InvalidArgument("must be >= 1", "n")
        ids, sample = await self._blocking(collection.sample_items, request.n, request.seed)
        rows = max(1, SAMPLE_CHUNK_BYTES // (4 * collection.config.dim))
        for start in range(0, len(sample), rows):
            chunk = np.ascontiguousarray(sample[start : start + rows], dtype="<f4")
            message = indexer_pb2.VectorChunk(
                rows=len(chunk), dim=collection.config.dim, data=chunk.tobytes()
            )
            if request.include_items:
                chunk_ids = ids[start : start + rows]
                metadata = await self._blocking(collection.payloads.metadata, chunk_ids)
                message.ids.extend(chunk_ids)
                message.metadata.extend(json.dumps(metadata.get(i, {})) for i in chunk_ids)
            yield message

    async def InstallTemplate(
        self, request: indexer_pb2.InstallTemplateRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.InstallTemplateResponse:
        collection = await self._collection(request.collection)
        table = [(e.nprobe, e.recall) for e in request.nprobe_table]
        generation, template_id = await self._blocking(
            collection.install_template, request.index, request.factory, table
        )
        return indexer_pb2.InstallTemplateResponse(next_generation=generation, template_id=template_id)

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
        await self._collection(request.collection)
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
            default_nprobe=report["default_depth"],
            next_generations=report["next_generations"],
            template_id=report["template_id"],
            nprobe_table=[indexer_pb2.NprobeRecall(nprobe=n, recall=r) for n, r in report["depth_table"]],
        )

    async def Compact(
        self, request: indexer_pb2.CompactRequest, context: grpc.aio.ServicerContext
    ) -> indexer_pb2.CompactResponse:
        collection = await self._collection(request.collection)
        await self._blocking(collection.compact)
        return indexer_pb2.CompactResponse(generation=collection.generation, rows=collection.items.rows)
