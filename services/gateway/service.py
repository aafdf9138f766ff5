"""What the gateway does, free of gRPC: embed queries, fan out to shards, merge, cache, write."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from semsearch.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from semsearch.merge import merge_topk
from semsearch.routing import shard_for
from services.embedder.client import EmbedderClient, EmbedderUnavailable
from services.embedder.preprocess import InputError, normalize_text
from services.gateway import metrics
from services.gateway.cache import Cache, content_hash
from services.gateway.config import COLLECTION_MODELS, GatewaySettings
from services.gateway.fanout import Gathered, Hit, gather_shards

if TYPE_CHECKING:
    from services.gateway.shard_client import ShardClient

log = logging.getLogger(__name__)


@dataclass
class Query:
    collection: str
    kind: str  # "image", "text", "vector" or "id"
    image: bytes = b""
    text: str = ""
    vector: np.ndarray | None = None
    item_id: str = ""
    k: int = 10
    recall_target: float = 0.0
    nprobe: int = 0
    min_coverage: float = 1.0
    no_cache: bool = False
    timeout_s: float = 5.0


@dataclass
class SearchResult:
    hits: list[Hit]
    shards_answered: int
    shards_queried: int
    generations: dict[int, int]
    cached: bool
    timings: list[tuple[str, float]] = field(default_factory=list)
    model_version: str = ""


@dataclass
class UpsertInput:
    id: str
    image: bytes | None = None
    text: str | None = None
    vector: np.ndarray | None = None
    metadata: dict[str, str] = field(default_factory=dict)


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


class GatewayService:
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
        self.collections = {c.name: c for c in settings.collections}
        # Last generation seen per (collection, shard): part of result-cache keys, so an index swap
        # makes older cached results unreachable.
        self.generations: dict[str, dict[int, int]] = defaultdict(dict)

    # --- validation ---------------------------------------------------------------------------

    def config(self, collection: str):
        try:
            return self.collections[collection]
        except KeyError:
            known = ", ".join(sorted(self.collections))
            raise NotFound(f"unknown collection {collection!r} (known: {known})", "collection") from None

    def _check_vector(self, vector: np.ndarray, dim: int, field_name: str) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != dim:
            raise InvalidArgument(f"expected {dim} values, got {vector.shape[0]}", field_name)
        if not np.isfinite(vector).all():
            raise InvalidArgument("contains NaN or Inf", field_name)
        if not np.any(vector):
            raise InvalidArgument("is all zeros", field_name)
        return vector

    def _model(self, collection: str, field_name: str) -> str:
        model = COLLECTION_MODELS.get(collection)
        if model is None:
            raise InvalidArgument(f"collection {collection} takes vectors only", field_name)
        return model

    # --- query embedding ----------------------------------------------------------------------

    async def _embed_query(self, query: Query, dim: int, timer: Timer) -> tuple[np.ndarray, str]:
        """The query vector and the model version that produced it (embedding cache first)."""
        if query.kind == "vector":
            return self._check_vector(query.vector, dim, "vector"), ""
        model = self._model(query.collection, query.kind)
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
        else:
            if not query.image:
                raise InvalidArgument("image is empty", "image")
            digest = content_hash(b"i:" + query.image)
        cached = await self.cache.get_embedding(version, digest, dim)
        timer.lap("cache")
        if cached is not None:
            return cached, version
        try:
            if query.kind == "text":
                result = await self.embedder.embed_texts([text])
            else:
                result = await self.embedder.embed_images([query.image])
        except EmbedderUnavailable as exc:
            raise Unavailable(f"embedder unavailable, {query.kind} queries cannot be served: {exc}") from exc
        if result.errors[0]:
            raise InvalidArgument(result.errors[0], query.kind)
        timer.lap("embed")
        vector = result.vectors[0]
        await self.cache.set_embedding(version, digest, vector)
        return vector, version

    async def _vector_of_item(self, collection: str, item_id: str, timeout: float) -> np.ndarray:
        if not item_id:
            raise InvalidArgument("is empty", "id")
        shard = self.shards[shard_for(item_id, len(self.shards))]
        items, missing = await shard.get(collection, [item_id], True, timeout)
        if missing or not items:
            raise NotFound(f"no item {item_id!r} in collection {collection}", "id")
        return items[0][1]

    # --- search -------------------------------------------------------------------------------

    def _result_key(self, query: Query, vector: np.ndarray, epoch: int) -> str:
        generations = sorted(self.generations[query.collection].items())
        fingerprint = json.dumps(
            [
                query.collection,
                query.kind,
                query.item_id,
                query.k,
                query.recall_target,
                query.nprobe,
                epoch,
                generations,
                len(self.shards),
            ]
        ).encode()
        return hashlib.sha256(fingerprint + np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()

    async def search(self, query: Query) -> SearchResult:
        config = self.config(query.collection)
        if not 1 <= query.k <= self.settings.max_k:
            raise InvalidArgument(f"must be in [1, {self.settings.max_k}], got {query.k}", "k")
        if not 0 <= query.min_coverage <= 1:
            raise InvalidArgument(f"must be in [0, 1], got {query.min_coverage}", "min_coverage")
        if not 0 <= query.recall_target <= 1:
            raise InvalidArgument(f"must be in [0, 1], got {query.recall_target}", "recall_target")
        deadline = time.monotonic() + query.timeout_s
        timer = Timer()
        begin = time.perf_counter()
        if query.kind == "id":
            vector = await self._vector_of_item(query.collection, query.item_id, query.timeout_s)
            version = ""
            timer.lap("lookup")
        else:
            vector, version = await self._embed_query(query, config.dim, timer)

        key = None
        if not query.no_cache:
            epoch = await self.cache.epoch(query.collection)
            if epoch is not None:
                key = self._result_key(query, vector, epoch)
                payload = await self.cache.get_result(query.collection, key)
                timer.lap("cache")
                if payload is not None:
                    result = _decode_result(payload)
                    result.cached = True
                    result.timings = timer.stages
                    result.model_version = version
                    metrics.SEARCH_SECONDS.labels(query.kind).observe(time.perf_counter() - begin)
                    return result

        k = query.k + 1 if query.kind == "id" else query.k  # the item itself is dropped below
        queries = vector[None, :].astype(np.float32)

        async def call(shard: int, client: ShardClient):
            return await client.search(
                query.collection, queries, k, query.nprobe, query.recall_target, deadline - time.monotonic()
            )

        gathered: Gathered = await gather_shards(self.shards, call, deadline - time.monotonic())
        timer.lap("fanout")
        for shard, exc in gathered.failures.items():
            if isinstance(exc, InvalidArgument | NotFound):
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
        hits = merge_topk(
            [answer.hits[0] for answer in gathered.answers.values()],
            k,
            key=lambda h: (h.score, h.id),
        )
        if query.kind == "id":
            hits = [h for h in hits if h.id != query.item_id][: query.k]
        timer.lap("merge")
        result = SearchResult(
            hits=hits,
            shards_answered=answered,
            shards_queried=len(self.shards),
            generations={s: a.generation for s, a in gathered.answers.items()},
            cached=False,
            timings=timer.stages,
            model_version=version,
        )
        if key is not None and answered == len(self.shards):
            # Keyed by the generations that answered, which the next lookup will also use.
            key = self._result_key(query, vector, epoch)
            await self.cache.set_result(query.collection, key, _encode_result(result))
        metrics.SEARCH_SECONDS.labels(query.kind).observe(time.perf_counter() - begin)
        return result

    # --- writes -------------------------------------------------------------------------------

    async def upsert(
        self, collection: str, items: Sequence[UpsertInput], timeout_s: float
    ) -> list[str | None]:
        """Embed what needs embedding, route by id, write to the owning shards. Returns one error
        per item (None: durable on its shard)."""
        config = self.config(collection)
        if not items:
            raise InvalidArgument("no items", "items")
        if len(items) > self.settings.max_batch:
            raise InvalidArgument(
                f"{len(items)} items, more than the limit of {self.settings.max_batch}", "items"
            )
        deadline = time.monotonic() + timeout_s
        errors: list[str | None] = [None] * len(items)
        vectors = np.zeros((len(items), config.dim), dtype=np.float32)
        seen: set[str] = set()
        images, texts = [], []
        for i, item in enumerate(items):
            if not item.id or len(item.id.encode("utf-8")) > 512:
                errors[i] = f"items[{i}].id: must be 1..512 bytes"
            elif item.id in seen:
                errors[i] = f"items[{i}].id: duplicate id {item.id!r} in one request"
            elif item.vector is not None:
                try:
                    vectors[i] = self._check_vector(item.vector, config.dim, f"items[{i}].vector")
                except InvalidArgument as exc:
                    errors[i] = str(exc)
            elif item.image is not None:
                images.append(i)
            elif item.text is not None:
                texts.append(i)
            else:
                errors[i] = f"items[{i}]: needs an image, a text or a vector"
            seen.add(item.id)
        for kind, members in (("image", images), ("text", texts)):
            if not members:
                continue
            try:
                self._model(collection, kind)
                if kind == "image":
                    result = await self.embedder.embed_images([items[i].image for i in members])
                else:
                    result = await self.embedder.embed_texts([items[i].text for i in members])
            except (InvalidArgument, EmbedderUnavailable) as exc:
                for i in members:
                    errors[i] = f"items[{i}].{kind}: {exc}"
                continue
            for j, i in enumerate(members):
                if result.errors[j]:
                    errors[i] = f"items[{i}].{kind}: {result.errors[j]}"
                else:
                    vectors[i] = result.vectors[j]
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            if errors[i] is None:
                by_shard[shard_for(item.id, len(self.shards))].append(i)

        async def write(shard: int, members: list[int]) -> None:
            try:
                await self.shards[shard].upsert(
                    collection,
                    [items[i].id for i in members],
                    vectors[members],
                    [dict(items[i].metadata) for i in members],
                    max(deadline - time.monotonic(), 0.001),
                )
            except Exception as exc:
                for i in members:
                    errors[i] = f"shard {shard}: {exc}"

        await asyncio.gather(*(write(s, m) for s, m in by_shard.items()))
        if any(e is None for e in errors):
            await self.cache.bump_epoch(collection)
        ok = sum(e is None for e in errors)
        metrics.ITEMS.labels("ok").inc(ok)
        metrics.ITEMS.labels("failed").inc(len(errors) - ok)
        return errors

    async def delete(self, collection: str, ids: Sequence[str], timeout_s: float) -> tuple[int, list[str]]:
        self.config(collection)
        if not ids:
            raise InvalidArgument("no ids", "ids")
        by_shard: dict[int, list[str]] = defaultdict(list)
        for item_id in dict.fromkeys(ids):
            by_shard[shard_for(item_id, len(self.shards))].append(item_id)

        async def remove(shard: int, members: list[str]) -> tuple[int, list[str]]:
            client = self.shards[shard]
            _, missing = await client.get(collection, members, False, timeout_s)
            present = [m for m in members if m not in set(missing)]
            deleted = await client.delete(collection, present, timeout_s) if present else 0
            return deleted, missing

        results = await asyncio.gather(*(remove(s, m) for s, m in by_shard.items()))
        await self.cache.bump_epoch(collection)
        return sum(r[0] for r in results), [m for r in results for m in r[1]]

    async def get(self, collection: str, ids: Sequence[str], include_vectors: bool, timeout_s: float):
        self.config(collection)
        if not ids:
            raise InvalidArgument("no ids", "ids")
        by_shard: dict[int, list[str]] = defaultdict(list)
        for item_id in dict.fromkeys(ids):
            by_shard[shard_for(item_id, len(self.shards))].append(item_id)
        results = await asyncio.gather(
            *(self.shards[s].get(collection, m, include_vectors, timeout_s) for s, m in by_shard.items())
        )
        return [it for r in results for it in r[0]], [m for r in results for m in r[1]]

    async def list_collections(self, timeout_s: float) -> list[dict]:
        async def stats(shard: int, client: ShardClient):
            return await client.stats(timeout_s)

        gathered = await gather_shards(self.shards, stats, timeout_s)
        out = []
        for name, config in self.collections.items():
            model = COLLECTION_MODELS.get(name, "")
            version = ""
            if model:
                try:
                    version = await self.embedder.model_version(model)
                except EmbedderUnavailable:
                    version = ""
            count, generations, index = 0, {}, "exact"
            for shard, response in gathered.answers.items():
                for c in response.collections:
                    if c.name == name:
                        count += c.count
                        generations[shard] = c.generation
                        index = c.index
            out.append(
                {
                    "name": name,
                    "dim": config.dim,
                    "count": count,
                    "model": model,
                    "model_version": version,
                    "index": index,
                    "generations": generations,
                    "shards_answered": len(gathered.answers),
                    "shards_total": len(self.shards),
                }
            )
        return out

    async def ready(self) -> bool:
        """Triton ready and enough shards answering Stats (`min_serving_shards`, default all)."""
        if not await self.embedder.ready():
            return False
        gathered = await gather_shards(self.shards, lambda s, c: c.stats(1.0), 1.0)
        return len(gathered.answers) >= (self.settings.min_serving_shards or len(self.shards))


def _encode_result(result: SearchResult) -> bytes:
    return json.dumps(
        {
            "hits": [[h.id, h.score, h.metadata] for h in result.hits],
            "answered": result.shards_answered,
            "queried": result.shards_queried,
            "generations": result.generations,
        }
    ).encode()


def _decode_result(payload: bytes) -> SearchResult:
    data = json.loads(payload)
    return SearchResult(
        hits=[Hit(i, s, m) for i, s, m in data["hits"]],
        shards_answered=data["answered"],
        shards_queried=data["queried"],
        generations={int(k): v for k, v in data["generations"].items()},
        cached=True,
    )
