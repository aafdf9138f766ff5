"""The public Search gRPC servicer: protobuf <-> gateway domain; errors mapped by the interceptor."""

from __future__ import annotations

import asyncio
import collections
import logging

import grpc
import numpy as np

from semsearch.core.errors import InvalidArgument, ServiceError
from semsearch.rpc import INTERNAL_MESSAGE
from semsearch.specs import config_from_spec, spec_from_config
from semsearch.v1 import common_pb2, search_pb2, search_pb2_grpc
from services.gateway.collections import CollectionView
from services.gateway.domain import Query, UpsertInput
from services.gateway.service import GatewayService
from services.gateway.validation import decode_vector

STREAM_WINDOW = 4
log = logging.getLogger(__name__)


def _vector(message: common_pb2.Vector, field_name: str) -> np.ndarray:
    try:
        return decode_vector(message.values, message.data)
    except ValueError as exc:
        raise InvalidArgument(str(exc), field_name) from exc


def _timeout(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """The caller's remaining deadline, capped by the gateway default."""
    remaining = context.time_remaining()
    return default_s if remaining is None else max(0.001, min(remaining, default_s * 12))


class SearchServicer(search_pb2_grpc.SearchServicer):
    def __init__(self, service: GatewayService) -> None:
        self.service = service
        self.default_timeout_s = service.settings.default_deadline_s
        self.max_batch = service.settings.max_batch

    async def Search(
        self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchResponse:
        return await self._search(request, _timeout(context, self.default_timeout_s))

    async def SearchBatch(
        self, request: search_pb2.SearchBatchRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchBatchResponse:
        if not request.queries:
            raise InvalidArgument("no queries", "queries")
        if len(request.queries) > self.max_batch:
            raise InvalidArgument(
                f"{len(request.queries)} queries, more than the limit of {self.max_batch}", "queries"
            )
        timeout_s = _timeout(context, self.default_timeout_s)

        async def one(i: int, query: search_pb2.SearchRequest) -> search_pb2.SearchBatchResult:
            """The query's result, or its status as the interceptor would answer a Search with it."""
            try:
                return search_pb2.SearchBatchResult(code=0, response=await self._search(query, timeout_s))
            except Exception as exc:
                if isinstance(exc, ServiceError) and exc.code != "INTERNAL":
                    return search_pb2.SearchBatchResult(
                        code=grpc.StatusCode[exc.code].value[0], message=str(exc)
                    )
                log.exception("queries[%d] failed", i)
                return search_pb2.SearchBatchResult(
                    code=grpc.StatusCode.INTERNAL.value[0], message=INTERNAL_MESSAGE
                )

        results = await asyncio.gather(*(one(i, q) for i, q in enumerate(request.queries)))
        return search_pb2.SearchBatchResponse(results=results)

    async def _search(self, request: search_pb2.SearchRequest, timeout_s: float) -> search_pb2.SearchResponse:
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidArgument("set one of image, text, vector or id", "query")
        query = Query(
            collection=request.collection,
            kind=kind,
            image=request.image,
            text=request.text,
            vector=_vector(request.vector, "vector") if kind == "vector" else None,
            item_id=request.id,
            k=request.k or 10,
            recall_target=request.recall_target,
            nprobe=request.nprobe,
            min_coverage=request.min_coverage if request.HasField("min_coverage") else 1.0,
            no_cache=request.no_cache,
            include_payloads=request.include_payloads,
            filter=request.filter,
            exact=request.exact,
            timeout_s=timeout_s,
        )
        result = await self.service.search(query)
        return search_pb2.SearchResponse(
            hits=[
                common_pb2.Hit(id=h.id, score=h.score, metadata=h.metadata, payload=h.payload)
                for h in result.hits
            ],
            shards_answered=result.shards_answered,
            shards_queried=result.shards_queried,
            generations=result.generations,
            cached=result.cached,
            timings=[common_pb2.StageTiming(stage=s, seconds=t) for s, t in result.timings],
            model_version=result.model_version,
            shard_info=[
                search_pb2.ShardSearchInfo(
                    shard=i.shard,
                    plan=i.plan,
                    depth=i.depth,
                    matched=i.matched,
                    batch_size=i.batch_size,
                    seconds=i.seconds,
                )
                for i in result.shard_info
            ],
        )

    async def _upsert(self, request: search_pb2.UpsertRequest, timeout_s: float) -> search_pb2.UpsertResponse:
        items = []
        for item in request.items:
            content = item.WhichOneof("content")
            vector, vector_error = None, ""
            if content == "vector":
                try:
                    vector = decode_vector(item.vector.values, item.vector.data)
                except ValueError as exc:  # this item fails alone (writes.py names its field)
                    vector, vector_error = np.zeros(0, dtype=np.float32), str(exc)
            items.append(
                UpsertInput(
                    id=item.id,
                    image=item.image if content == "image" else None,
                    text=item.text if content == "text" else None,
                    vector=vector,
                    metadata=dict(item.metadata),
                    payload=item.payload,
                    vector_error=vector_error,
                )
            )
        errors = await self.service.upsert(request.collection, items, timeout_s)
        results = [
            search_pb2.ItemResult(id=item.id, ok=error is None, error=error or "")
            for item, error in zip(request.items, errors)
        ]
        failed = sum(e is not None for e in errors)
        return search_pb2.UpsertResponse(results=results, succeeded=len(errors) - failed, failed=failed)

    async def Upsert(
        self, request: search_pb2.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.UpsertResponse:
        return await self._upsert(request, _timeout(context, self.default_timeout_s * 6))

    async def UpsertStream(self, request_iterator, context: grpc.aio.ServicerContext):
        # Up to STREAM_WINDOW requests are in progress at once (decode, embed and write overlap);
        # the next request is read only when a slot frees, so a fast client is held back by gRPC
        # flow control instead of filling the gateway's memory. Responses keep request order.
        pending: collections.deque[asyncio.Task] = collections.deque()
        timeout_s = self.default_timeout_s * 6
        try:
            async for request in request_iterator:
                pending.append(asyncio.create_task(self._upsert(request, timeout_s)))
                if len(pending) >= STREAM_WINDOW:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:
                task.cancel()

    async def Delete(
        self, request: search_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.DeleteResponse:
        deleted, missing = await self.service.delete(
            request.collection, list(request.ids), _timeout(context, self.default_timeout_s)
        )
        return search_pb2.DeleteResponse(deleted=deleted, missing=missing)

    async def Get(
        self, request: search_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.GetResponse:
        items, missing = await self.service.get(
            request.collection,
            list(request.ids),
            request.include_vectors,
            _timeout(context, self.default_timeout_s),
            request.include_payloads,
        )
        response = search_pb2.GetResponse(missing=missing)
        for item_id, vector, meta, payload in items:
            item = response.items.add(id=item_id, metadata=meta, payload=payload)
            if vector is not None:
                item.vector.values.extend(vector.tolist())
        return response

    async def ListCollections(
        self, request: search_pb2.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.ListCollectionsResponse:
        views = await self.service.list_collections(_timeout(context, self.default_timeout_s))
        return search_pb2.ListCollectionsResponse(collections=[_info(v) for v in views])

    async def CreateCollection(
        self, request: search_pb2.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.CollectionInfo:
        config = config_from_spec(request.spec)
        return _info(await self.service.create_collection(config, _timeout(context, self.default_timeout_s)))

    async def DropCollection(
        self, request: search_pb2.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.DropCollectionResponse:
        await self.service.drop_collection(request.name, _timeout(context, self.default_timeout_s * 6))
        return search_pb2.DropCollectionResponse()

    async def DescribeCollection(
        self, request: search_pb2.DescribeCollectionRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.CollectionInfo:
        return _info(
            await self.service.describe_collection(request.name, _timeout(context, self.default_timeout_s))
        )

    async def SampleItems(self, request: search_pb2.SampleItemsRequest, context: grpc.aio.ServicerContext):
        remaining = context.time_remaining()  # a large sample takes a while: the caller's deadline, or 5 min
        timeout_s = 300.0 if remaining is None else max(0.001, remaining)
        async for ids, vectors, metadata in self.service.sample_items(
            request.collection, request.n, request.seed, timeout_s
        ):
            yield search_pb2.SampleItemsChunk(
                ids=ids,
                dim=vectors.shape[1],
                vectors=np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
                metadata=[search_pb2.Metadata(values=m) for m in metadata],
            )


def _info(view: CollectionView) -> search_pb2.CollectionInfo:
    config = view.config
    return search_pb2.CollectionInfo(
        name=config.name,
        dim=config.dim,
        count=view.count,
        model=config.model,
        model_version=view.model_version,
        index=view.index,
        generations=view.generations,
        shards_answered=len(view.shards),
        shards_total=view.shards_total,
        spec=spec_from_config(config),
        state=view.state,
        query_kinds=config.accepted_kinds,
        item_kinds=config.item_kinds,
        shards=[
            search_pb2.ShardUsage(
                shard=shard,
                count=c.count,
                rows=c.rows,
                disk_bytes=c.disk_bytes,
                memory_bytes=c.memory_bytes,
                generation=c.generation,
                rebuilding=c.rebuilding,
                rebuild_progress=c.rebuild_progress,
                drift=c.drift,
                estimated_recall=c.estimated_recall,
                recall_samples=c.recall_samples,
            )
            for shard, c in sorted(view.shards.items())
        ],
    )
