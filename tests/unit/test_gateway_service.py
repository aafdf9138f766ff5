"""The gateway's domain logic with fake shards, embedder and Redis: validation wording, routing,
cache invalidation before acknowledgement (cancelled, failed, backed-off and Redis-down writes)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from semsearch.core.collections import CollectionConfig, image_collection, text_collection
from semsearch.core.errors import InvalidArgument, NotFound, Unavailable
from semsearch.v1 import common_pb2, indexer_pb2
from services.gateway.cache import Cache
from services.gateway.catalog import CatalogCache
from services.gateway.config import GatewaySettings
from services.gateway.domain import Hit, Query, ShardHits, UpsertInput
from services.gateway.embedder_client import Embeddings
from services.gateway.service import GatewayService
from services.gateway.shard_client import Catalog, hits_of


class FakeRedis:
    """Enough of redis.asyncio.Redis: get, mget, set, incr; `fail` makes the next calls raise; `calls`
    counts round trips."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.fail: list[BaseException] = []
        self.incrs = 0
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)

    async def get(self, key):
        self._maybe_fail()
        return self.data.get(key)

    async def mget(self, *keys):
        self._maybe_fail()
        return [self.data.get(k) for k in keys]

    async def set(self, key, value, ex=None):
        self._maybe_fail()
        self.data[key] = value if isinstance(value, bytes) else str(value).encode()

    async def incr(self, key):
        self._maybe_fail()
        value = int(self.data.get(key, b"0")) + 1
        self.data[key] = str(value).encode()
        self.incrs += 1
        return value

    async def aclose(self):
        pass


class FakeShard:
    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.name = f"shard {shard} of 2"
        self.items: dict[str, np.ndarray] = {}
        self.gate: asyncio.Event | None = None
        self.fail_writes: BaseException | None = None
        self.searches: list[dict] = []

    async def upsert(self, collection, ids, vectors, metadata, payloads, timeout):
        if self.gate is not None:
            await self.gate.wait()
        self.items.update(zip(ids, vectors))  # the write lands...
        if self.fail_writes is not None:
            raise self.fail_writes  # ...and its answer is lost
        return 1

    async def delete(self, collection, ids, timeout):
        deleted = [i for i in ids if self.items.pop(i, None) is not None]
        return len(deleted), [i for i in ids if i not in deleted]

    async def get(self, collection, ids, include_vectors, timeout):
        return [(i, self.items[i], {}) for i in ids if i in self.items], [
            i for i in ids if i not in self.items
        ]

    async def search(
        self, collection, queries, k, nprobe, recall_target, timeout, exclude_ids=None, payloads=False,
        where="", exact=False,
    ):  # fmt: skip
        self.searches.append({"k": k, "exclude": exclude_ids})
        hits = [
            Hit(i, float(v @ queries[0]), {}) for i, v in self.items.items() if i not in (exclude_ids or [])
        ]
        return ShardHits([sorted(hits, key=lambda h: -h.score)[:k]], 0)

    async def stats(self, timeout):
        raise AssertionError("not used")

    async def catalog(self, timeout):
        plain = CollectionConfig(name="plain", dim=384)  # vectors only, no model
        return Catalog(1, {c.name: c for c in (image_collection(), text_collection(), plain)})


class FakeEmbedder:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []  # (model, text) of every text embedded

    async def model_version(self, model):
        return f"{model}@test"

    async def embed_texts(self, texts, model=None):
        model = model or "minilm_l6"
        self.texts += [(model, t) for t in texts]
        dim = 1280 if model in ("efficientnet_lite0", "imagenet_bridge") else 384
        return Embeddings(np.stack([unit(len(t), dim) for t in texts]), [None] * len(texts), f"{model}@test")


def make_service(redis: FakeRedis | None = None) -> tuple[GatewayService, list[FakeShard], FakeRedis]:
    redis = redis or FakeRedis()
    cache = Cache(redis, embedding_ttl_s=60, result_ttl_s=60, max_result_bytes=1 << 20, timeout_s=0.05)
    settings = GatewaySettings(shards=("a", "b"), triton_url="t", redis_url="r")
    shards = [FakeShard(0), FakeShard(1)]
    return GatewayService(settings, shards, FakeEmbedder(), cache), shards, redis


def png() -> bytes:
    """A real, decodable image: a text collection must refuse it by kind, not by decoding."""
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def run(coro):
    return asyncio.run(coro)


def test_items_of_a_kind_the_collection_does_not_take_fail_alone():
    service, _, _ = make_service()
    items = [
        UpsertInput("ok", vector=unit(1)),
        UpsertInput("pic", image=png()),
        UpsertInput("big", vector=unit(2), metadata={"x": "y" * 5000}),
        UpsertInput("ok", vector=unit(3)),
        UpsertInput("", vector=unit(4)),
        UpsertInput("nothing"),
    ]
    errors = run(service.upsert("texts", items, 5))
    assert errors[0] is None
    assert errors[1].startswith("items[1].image: collection 'texts' takes text or vector items")
    assert errors[2].startswith("items[2].metadata: ")
    assert (
        "duplicate id" in errors[3] and errors[4].startswith("items[4].id") and "needs an image" in errors[5]
    )


def test_query_kinds_a_collection_cannot_answer_name_the_collection_and_the_kinds():
    service, _, _ = make_service()
    with pytest.raises(InvalidArgument) as info:
        run(service.search(Query("texts", "image", image=png())))
    assert (
        str(info.value)
        == "image: collection 'texts' accepts text, vector, stored id queries, not image queries"
    )
    with pytest.raises(InvalidArgument) as info:
        run(service.search(Query("plain", "text", text="a red sneaker")))
    assert str(info.value) == "text: collection 'plain' accepts vector, stored id queries, not text queries"


def test_words_on_an_image_collection_go_through_the_bridge_and_say_so():
    service, _, _ = make_service()
    run(service.upsert("images", [UpsertInput(f"v{i}", vector=unit(i, 1280)) for i in range(5)], 5))
    result = run(service.search(Query("images", "text", text="ankle boot", k=3)))
    assert service.embedder.texts[-1] == ("imagenet_bridge", "ankle boot")
    assert result.model_version == "imagenet_bridge@test" and len(result.hits) == 3
    # Items are still what the model embeds: an image collection takes no text items.
    errors = run(service.upsert("images", [UpsertInput("t", text="a boot")], 5))
    assert errors[0] == "items[0].text: collection 'images' takes image or vector items, not texts"


def test_more_like_this_excludes_the_item_at_the_shards_and_keeps_k():
    service, shards, _ = make_service()
    run(service.upsert("texts", [UpsertInput(f"v{i}", vector=unit(i)) for i in range(30)], 5))
    result = run(service.search(Query("texts", "id", item_id="v0", k=1000, no_cache=True)))
    assert len(result.hits) == 29 and "v0" not in {h.id for h in result.hits}
    assert {(s["k"], tuple(s["exclude"])) for shard in shards for s in shard.searches} == {(1000, ("v0",))}


def test_a_cached_result_costs_one_redis_round_trip_and_no_embedding():
    service, _, redis = make_service()
    run(service.upsert("texts", [UpsertInput(f"v{i}", vector=unit(i)) for i in range(10)], 5))
    query = Query("texts", "text", text="the meaning of life", k=3)
    first = run(service.search(query))
    embedded, calls = len(service.embedder.texts), redis.calls
    again = run(service.search(query))
    assert not first.cached and again.cached and [h.id for h in again.hits] == [h.id for h in first.hits]
    assert redis.calls - calls == 1 and len(service.embedder.texts) == embedded
    # The same words spelt with other spacing are the same query.
    assert run(service.search(Query("texts", "text", text="  the meaning  of life ", k=3))).cached


def cached_then_written(service: GatewayService, write) -> tuple[list[str], list[str]]:
    """Cache a search, run `write`, search again: (hits before, hits after)."""
    query = Query("texts", "vector", vector=unit(99), k=3)

    async def scenario():
        first = await service.search(query)
        again = await service.search(query)
        assert again.cached
        await write()
        after = await service.search(query)
        return [h.id for h in first.hits], [h.id for h in after.hits]

    return run(scenario())


def test_a_cancelled_write_still_invalidates_the_cache():
    service, shards, _redis = make_service()
    run(service.upsert("texts", [UpsertInput(f"v{i}", vector=unit(i)) for i in range(10)], 5))
    for shard in shards:
        shard.gate = asyncio.Event()

    async def cancelled_write():
        task = asyncio.create_task(service.upsert("texts", [UpsertInput("best", vector=unit(99))], 5))
        await asyncio.sleep(0.01)
        for shard in shards:
            shard.gate.set()
        await asyncio.sleep(0)
        task.cancel()  # the client went away while its write was landing
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # the shielded invalidation finishes

    before, after = cached_then_written(service, cancelled_write)
    assert "best" not in before and after[0] == "best"


def test_a_write_whose_answer_was_lost_still_invalidates_the_cache():
    service, shards, _ = make_service()
    run(service.upsert("texts", [UpsertInput(f"v{i}", vector=unit(i)) for i in range(10)], 5))
    for shard in shards:
        shard.fail_writes = Unavailable("shard is unavailable")

    async def lost_answer():
        errors = await service.upsert("texts", [UpsertInput("best", vector=unit(99))], 5)
        assert errors[0] is not None  # reported failed, yet it landed

    _before, after = cached_then_written(service, lost_answer)
    assert after[0] == "best"


def test_invalidation_is_not_skipped_while_cache_reads_back_off():
    service, _, redis = make_service()
    run(service.upsert("texts", [UpsertInput(f"v{i}", vector=unit(i)) for i in range(10)], 5))

    async def write_during_backoff():
        redis.fail.append(RedisTimeoutError("slow"))
        await service.cache.get_embedding("m", "d", 3)  # an error: reads are skipped for a second
        errors = await service.upsert("texts", [UpsertInput("best", vector=unit(99))], 5)
        assert errors == [None]
        service.cache._down_until = 0.0  # the second is over

    _before, after = cached_then_written(service, write_during_backoff)
    assert after[0] == "best"


def test_redis_down_acknowledges_and_reads_no_cached_result_until_invalidated():
    service, _, redis = make_service()
    run(service.upsert("texts", [UpsertInput(f"v{i}", vector=unit(i)) for i in range(10)], 5))

    async def write_while_redis_down():
        redis.fail.extend([RedisConnectionError("Connection refused")] * 2)
        assert await service.upsert("texts", [UpsertInput("best", vector=unit(99))], 5) == [None]
        assert service.cache.pending == {"texts"}
        service.cache._down_until = 0.0

    _before, after = cached_then_written(service, write_while_redis_down)
    assert after[0] == "best" and not service.cache.pending


def test_one_reset_connection_is_not_redis_down_the_epoch_is_still_bumped():
    service, _, redis = make_service()

    async def write():
        redis.fail.append(RedisConnectionError("Connection reset by peer"))  # a stale pooled connection
        return await service.upsert("texts", [UpsertInput("x", vector=unit(1))], 5)

    incrs = redis.incrs
    assert run(write()) == [None]
    assert redis.incrs == incrs + 1 and not service.cache.pending


def test_redis_that_does_not_confirm_makes_the_write_fail_retryably():
    service, _, redis = make_service()

    async def write():
        redis.fail.extend([RedisTimeoutError("stalled")] * 3)
        return await service.upsert("texts", [UpsertInput("x", vector=unit(1))], 5)

    errors = run(write())
    assert "did not confirm" in errors[0] and "retrying the write is safe" in errors[0]
    assert service.cache.pending == {"texts"}


class CatalogShard:
    """A shard whose catalog copy grows when `created` is set; counts catalog reads."""

    def __init__(self) -> None:
        self.created = False
        self.reads = 0

    async def catalog(self, timeout):
        self.reads += 1
        configs = [CollectionConfig(name="new", dim=3)] if self.created else []
        return Catalog(2 if self.created else 1, {c.name: c for c in configs})


def test_a_collection_created_through_another_gateway_is_found_at_once():
    shard = CatalogShard()
    cache = CatalogCache([shard])

    async def scenario():
        await cache.refresh()  # this gateway's periodic refresh, just before the creation elsewhere
        shard.created = True
        return await cache.get("new")

    assert run(scenario()).name == "new"


def test_requests_naming_unknown_collections_share_catalog_reads():
    shard = CatalogShard()
    cache = CatalogCache([shard])

    async def flood():
        async def miss():
            with pytest.raises(NotFound):
                await cache.get("ghost")

        await asyncio.gather(*(miss() for _ in range(200)))

    run(flood())
    assert shard.reads <= 3


def test_shard_answers_are_read_packed_or_as_hit_messages():
    packed = indexer_pb2.ShardSearchResponse(
        hit_counts=[2, 0, 1],
        hit_ids=["a", "b", "c"],
        hit_scores=np.asarray([0.9, 0.5, 0.7], dtype="<f4").tobytes(),
        hit_metadata=['{"label": "x"}', "{}", "{}"],
    )
    rows = hits_of(packed, 3)
    assert [[h.id for h in r] for r in rows] == [["a", "b"], [], ["c"]]
    assert rows[0][0].metadata == {"label": "x"} and rows[0][1].score == pytest.approx(0.5)
    # A shard from before packed answers (a rolling upgrade): the same hits from Hit messages.
    old = indexer_pb2.ShardSearchResponse()
    for ids in (["a", "b"], [], ["c"]):
        old.results.add().hits.extend(common_pb2.Hit(id=i, score=0.5, metadata={"k": i}) for i in ids)
    assert [[h.id for h in r] for r in hits_of(old, 3)] == [["a", "b"], [], ["c"]]
    broken = indexer_pb2.ShardSearchResponse(hit_counts=[2], hit_ids=["a"], hit_metadata=["{}"])
    with pytest.raises(ValueError, match="1 hit counts summing to 2 for 1 queries, 1 ids"):
        hits_of(broken, 1)
