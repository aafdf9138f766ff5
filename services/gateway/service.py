"""What the gateway does, free of gRPC: a search is result cache -> embed -> fan-out -> merge -> cache (here);
a write is validate -> embed -> route -> write -> invalidate (writes.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from semsearch.core import filters, models
from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import DeadlineExceeded, InvalidArgument, NotFound, ServiceError, Unavailable
from semsearch.core.merge import merge_topk
from semsearch.core.routing import shard_for
from semsearch.media import InputError, normalize_text
from services.gateway import metrics
from services.gateway.cache import Cache, content_hash
from services.gateway.catalog import CatalogCache
from services.gateway.collections import Collections
from services.gateway.config import GatewaySettings
from services.gateway.domain import Query, SearchResult
from services.gateway.embedder_client import EmbedderClient, EmbedderUnavailable
from services.gateway.fanout import Gathered, gather_shards
from services.gateway.validation import check_vector
from services.gateway.writes import Writes

if TYPE_CHECKING:
    from services.gateway.shard_client import ShardClient

log = logging.getLogger(__name__)

KIND_WORDS = {"image": "image", "text": "text", "vector": "vector", "id": "stored id"}


class Timer:
    """Per-stage wall times for responses and the stage histogram."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []
        self._begin = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages.append((stage, now - self._begin))
        metrics.STAGE_SECONDS.labels(stage).observe(now - self._begin)
        self._begin = now


@dataclass(frozen=True)
class QuerySource:
    """A checked query input. `identity` names the query's vector (the cache key part): the vector
    itself, the item id, or the model version with the digest of the words or image bytes."""

    identity: bytes
    version: str  # the embedding model's version; "" for vector and id queries
    vector: np.ndarray | None = None
    model: str = ""
    text: str = ""
    digest: str = ""


class GatewayService(Writes, Collections):
    """Clients of Triton, Redis and the shards are injected (tests pass real ones on free ports)."""

    def __init__(
        self,
        settings: GatewaySettings,
        shards: Sequence[ShardClient],
        embedder: EmbedderClient,
        cache: Cache,
    ) -> None:
        self.settings = settings
        self.shards = list(shards)
        self.embedder = embedder
        self.cache = cache
        self.catalog = CatalogCache(self.shards)
        # Last generation seen per (collection, shard): part of result-cache keys, so an index swap
        # makes older cached results unreachable.
        self.generations: dict[str, dict[int, int]] = defaultdict(dict)

    # --- validation ---------------------------------------------------------------------------

    async def config(self, collection: str) -> CollectionConfig:
        """A collection's settings from the catalog (NotFound naming the known collections)."""
        return await self.catalog.get(collection)

    def _check_kind(self, config: CollectionConfig, kind: str, field_name: str) -> None:
        collection, kinds = config.name, config.accepted_kinds
        if kind not in kinds:
            words = ", ".join(KIND_WORDS[k] for k in kinds)
            raise InvalidArgument(
                f"collection {collection!r} accepts {words} queries, not {KIND_WORDS[kind]} queries",
                field_name,
            )

    # --- search -------------------------------------------------------------------------------

    async def search(self, query: Query) -> SearchResult:
        """cache -> embed -> fan-out -> merge -> cache. A cached result is found from what names the
        query (its words, image bytes, vector or item id), before any embedding, in one Redis call."""
        config = await self.config(query.collection)
        self._check_search(query, config)
        deadline = time.monotonic() + query.timeout_s
        timer = Timer()
        begin = time.perf_counter()
        source = await self._source(query, config)
        epoch, shards = None, len(self.shards)
        if not query.no_cache:
            key = self.cache.result_key(query, source.identity, self.generations[query.collection], shards)
            epoch, cached = await self.cache.get_result(query.collection, key)
            timer.lap("result_cache")
            if cached is not None:
                cached.timings, cached.model_version = timer.stages, source.version
                metrics.SEARCH_SECONDS.labels(query.kind).observe(time.perf_counter() - begin)
                return cached
        vector = await self._query_vector(query, config, source, timer)
        gathered = await self._fan_out(query, vector, deadline)
        timer.lap("fanout")
        result = self._merge(query, gathered)
        timer.lap("merge")
        result.timings, result.model_version = timer.stages, source.version
        if epoch is not None and result.shards_answered == shards:
            # Stored with the epoch read before the fan-out, under the generations that answered.
            key = self.cache.result_key(query, source.identity, result.generations, shards)
            await self.cache.set_result(key, epoch, result)
        metrics.SEARCH_SECONDS.labels(query.kind).observe(time.perf_counter() - begin)
        return result

    def _check_search(self, query: Query, config: CollectionConfig) -> None:
        if not 1 <= query.k <= self.settings.max_k:
            raise InvalidArgument(f"must be in [1, {self.settings.max_k}], got {query.k}", "k")
        if not 0 <= query.min_coverage <= 1:
            raise InvalidArgument(f"must be in [0, 1], got {query.min_coverage}", "min_coverage")
        if not 0 <= query.recall_target <= 1 or np.isnan(query.recall_target):
            raise InvalidArgument(f"must be in [0, 1], got {query.recall_target}", "recall_target")
        self._check_kind(config, query.kind, query.kind)
        filters.check(filters.parse(query.filter), config.field_types, config.name)

    async def _source(self, query: Query, config: CollectionConfig) -> QuerySource:
        """The checked query input and what names its vector without computing it."""
        if query.kind == "vector":
            vector = check_vector(query.vector, config.dim, "vector")
            return QuerySource(b"v:" + vector.tobytes(), "", vector=vector)
        if query.kind == "id":
            if not query.item_id:
                raise InvalidArgument("is empty", "id")
            return QuerySource(b"d:" + query.item_id.encode("utf-8"), "")
        model = models.QUERY_MODELS[config.model][query.kind]
        try:
            version = await self.embedder.model_version(model)
        except EmbedderUnavailable as exc:
            raise Unavailable(f"embedder unavailable, {query.kind} queries cannot be served: {exc}") from exc
        if query.kind == "text":
            try:
                text = normalize_text(query.text)
            except InputError as exc:
                raise InvalidArgument(str(exc), "text") from exc
            digest = content_hash(b"t:" + text.encode("utf-8"))
            return QuerySource(f"{version}:{digest}".encode(), version, model=model, text=text, digest=digest)
        if not query.image:
            raise InvalidArgument("image is empty", "image")
        digest = content_hash(b"i:" + query.image)
        return QuerySource(f"{version}:{digest}".encode(), version, model=model, digest=digest)

    async def _query_vector(
        self, query: Query, config: CollectionConfig, source: QuerySource, timer: Timer
    ) -> np.ndarray:
        if source.vector is not None:
            return source.vector
        if query.kind == "id":
            vector = await self._vector_of_item(query.collection, query.item_id, query.timeout_s)
            timer.lap("lookup")
            return vector
        return await self._embed_query(query, config.dim, source, timer)

    async def _embed_query(self, query: Query, dim: int, source: QuerySource, timer: Timer) -> np.ndarray:
        """Image and text queries: the embedding cache first, then Triton (the served model that answers
        this kind of query for the collection's model: text on an image collection goes through the
        words-for-pictures bridge)."""
        cached = await self.cache.get_embedding(source.version, source.digest, dim)
        timer.lap("embedding_cache")
        if cached is not None:
            return cached
        try:
            if query.kind == "text":
                result = await self.embedder.embed_texts([source.text], model=source.model)
            else:
                result = await self.embedder.embed_images([query.image])
        except EmbedderUnavailable as exc:
            raise Unavailable(f"embedder unavailable, {query.kind} queries cannot be served: {exc}") from exc
        if result.errors[0]:
            raise InvalidArgument(result.errors[0], query.kind)
        timer.lap("embed")
        vector = result.vectors[0]
        await self.cache.set_embedding(source.version, source.digest, vector)
        return vector

    async def _vector_of_item(self, collection: str, item_id: str, timeout: float) -> np.ndarray:
        shard = self.shards[shard_for(item_id, len(self.shards))]
        items, missing = await shard.get(collection, [item_id], True, timeout)
        if missing or not items:
            raise NotFound(f"no item {item_id!r} in collection {collection!r}", "id")
        return items[0][1]

    async def _fan_out(self, query: Query, vector: np.ndarray, deadline: float) -> Gathered:
        """Every shard's top-k under the deadline; fails below the requested coverage."""
        queries = vector[None, :].astype(np.float32)
        exclude = [query.item_id] if query.kind == "id" else []

        async def call(shard: int, client: ShardClient):
            return await client.search(
                query.collection, queries, query.k, query.nprobe, query.recall_target,
                deadline - time.monotonic(), exclude, query.include_payloads, query.filter, query.exact,
            )  # fmt: skip

        gathered: Gathered = await gather_shards(self.shards, call, deadline - time.monotonic())
        for shard, exc in gathered.failures.items():
            if isinstance(exc, ServiceError) and not isinstance(exc, Unavailable | DeadlineExceeded):
                raise exc
            metrics.SHARD_ERRORS.labels(str(shard), type(exc).__name__).inc()
        for shard in gathered.timed_out:
            metrics.SHARD_ERRORS.labels(str(shard), "DeadlineExceeded").inc()
        metrics.SHARD_COVERAGE.observe(gathered.coverage)
        answered = len(gathered.answers)
        if answered == 0 or gathered.coverage < query.min_coverage:
            needed = max(1, int(np.ceil(query.min_coverage * len(self.shards))))
            detail = f"{answered} of {len(self.shards)} shards answered, min_coverage needs {needed}"
            if gathered.timed_out:
                raise DeadlineExceeded(detail)
            raise Unavailable(detail)
        for shard, answer in gathered.answers.items():
            self.generations[query.collection][shard] = answer.generation
        return gathered

    def _merge(self, query: Query, gathered: Gathered) -> SearchResult:
        hits = merge_topk(
            [a.hits[0] for a in gathered.answers.values()], query.k, key=lambda h: (h.score, h.id)
        )
        return SearchResult(
            hits=hits,
            shards_answered=len(gathered.answers),
            shards_queried=len(self.shards),
            generations={s: a.generation for s, a in gathered.answers.items()},
            cached=False,
            shard_info=[a.info for _, a in sorted(gathered.answers.items()) if a.info is not None],
        )

    def _by_shard(self, ids: Sequence[str]) -> dict[int, list[str]]:
        """Distinct ids grouped by the shard that owns them."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for item_id in dict.fromkeys(ids):
            by_shard[shard_for(item_id, len(self.shards))].append(item_id)
        return by_shard

    async def get(
        self,
        collection: str,
        ids: Sequence[str],
        include_vectors: bool,
        timeout_s: float,
        include_payloads: bool = False,
    ):
        """Stored items (id, vector or None, metadata, payload) and the ids not stored."""
        await self.config(collection)
        if not ids:
            raise InvalidArgument("no ids", "ids")
        by_shard = self._by_shard(ids)
        results = await asyncio.gather(
            *(
                self.shards[s].get(collection, m, include_vectors, timeout_s, include_payloads)
                for s, m in by_shard.items()
            )
        )
        return [it for r in results for it in r[0]], [m for r in results for m in r[1]]

    async def ready(self) -> bool:
        """Readiness: at least `min_serving_shards` shards answer Stats as the shard their position in
        the list says they are. Triton is not required: vector and id queries work without it."""
        gathered = await gather_shards(self.shards, lambda s, c: c.stats(1.0), 1.0)
        return len(gathered.answers) >= min(
            self.settings.min_serving_shards or len(self.shards), len(self.shards)
        )
