"""Redis caches of query embeddings and search results: keys, encoding, storage and invalidation.

Redis trouble means uncached, never failed, for searches. For writes, the result cache is invalidated
before a write is acknowledged (see invalidate())."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from semsearch.core.errors import Unavailable
from services.gateway import metrics
from services.gateway.domain import Hit, Query, SearchResult

log = logging.getLogger(__name__)

# After a Redis error, skip cache reads and fills for this long instead of paying a timeout on every
# request. Invalidations are never skipped.
BACKOFF_S = 1.0
INVALIDATE_ATTEMPTS = 3


async def within(coro, timeout_s: float):
    """`await coro` under a timeout (asyncio.TimeoutError). asyncio.timeout where there is one (3.11+):
    asyncio.wait_for wraps the call in a task of its own before 3.12, a measurable cost on the
    cache-hit path."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):
            return await coro
    return await asyncio.wait_for(coro, timeout_s)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CacheNotInvalidated(Unavailable):
    """A write is stored, but Redis was reachable and did not confirm the invalidation in time."""


class Cache:
    """Keys:
    - ``emb:<model version>:<sha256 of image bytes or normalised text>`` -> float32 vector bytes;
    - ``epoch:<collection>`` -> counter bumped by every write through any gateway;
    - ``res:<collection>:<sha256 of the query and the shard generations>`` -> the result with the
      epoch it was computed at; read together with the epoch in one MGET, used only when they agree.
    A write makes every result computed before it unusable (its epoch is old) and an index swap changes
    its key, so stale results are never served, need no flush, and are overwritten or expire by TTL
    (Redis runs with an LRU memory cap and no persistence, so a restarted Redis holds nothing stale
    either)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        embedding_ttl_s: int,
        result_ttl_s: int,
        max_result_bytes: int,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.embedding_ttl_s = embedding_ttl_s
        self.result_ttl_s = result_ttl_s
        self.max_result_bytes = max_result_bytes
        self.timeout_s = timeout_s
        self._down_until = 0.0
        # Collections whose last invalidation did not reach Redis: their cached results are not read
        # until an invalidation succeeds.
        self.pending: set[str] = set()

    async def _call(self, op: str, coro):
        if time.monotonic() < self._down_until:
            coro.close()
            metrics.CACHE_ERRORS.labels(op).inc()
            return None
        try:
            return await within(coro, self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(op, exc)
            return None

    def _failed(self, op: str, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.labels(op).inc()
        if time.monotonic() >= self._down_until:
            log.warning("redis %s failed (%s); serving uncached for %.0fs", op, type(exc).__name__, BACKOFF_S)
        self._down_until = time.monotonic() + BACKOFF_S

    # --- query embeddings -------------------------------------------------------------------------

    async def get_embedding(self, model_version: str, digest: str, dim: int) -> np.ndarray | None:
        data = await self._call("get", self.client.get(f"emb:{model_version}:{digest}"))
        hit = data is not None and len(data) == dim * 4
        metrics.CACHE_REQUESTS.labels("embedding", "hit" if hit else "miss").inc()
        return np.frombuffer(data, dtype="<f4").copy() if hit else None

    async def set_embedding(self, model_version: str, digest: str, vector: np.ndarray) -> None:
        payload = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        await self._call(
            "set", self.client.set(f"emb:{model_version}:{digest}", payload, ex=self.embedding_ttl_s)
        )

    # --- search results ---------------------------------------------------------------------------

    @staticmethod
    def result_key(query: Query, identity: bytes, generations: dict[int, int], shards: int) -> str:
        """Where the result of `query` on these shard generations is cached; `identity` names the query's
        vector (see GatewayService._source). The epoch is in the stored value, not the key."""
        fingerprint = json.dumps(
            [query.collection, query.kind, query.k, query.recall_target, query.nprobe,
             sorted(generations.items()), shards, query.include_payloads, query.filter, query.exact]
        ).encode()  # fmt: skip
        return f"res:{query.collection}:{content_hash(fingerprint + identity)}"

    async def get_result(self, collection: str, key: str) -> tuple[int | None, SearchResult | None]:
        """(the collection's epoch, the cached result computed at that epoch or None), in one round
        trip. Epoch None: the result cache cannot be used now (neither read nor filled). Read before
        searching: a write that lands meanwhile bumps the epoch, so a result computed on data from
        before the write carries an epoch nobody accepts any more."""
        if collection in self.pending and not await self._flush(collection):
            return None, None
        values = await self._call("get", self.client.mget(f"epoch:{collection}", key))
        if values is None:
            metrics.CACHE_REQUESTS.labels("result", "miss").inc()  # as the embedding cache counts
            return None, None
        epoch, data = int(values[0] or 0), values[1]
        decoded = json.loads(data) if data is not None else None
        hit = decoded is not None and decoded.get("epoch") == epoch
        metrics.CACHE_REQUESTS.labels("result", "hit" if hit else "miss").inc()
        if not hit:
            return epoch, None
        return epoch, SearchResult(
            hits=[Hit(i, s, m, base64.b64decode(p)) for i, s, m, p in decoded["hits"]],
            shards_answered=decoded["answered"],
            shards_queried=decoded["queried"],
            generations={int(k): v for k, v in decoded["generations"].items()},
            cached=True,
        )

    async def set_result(self, key: str, epoch: int, result: SearchResult) -> None:
        payload = json.dumps(
            {
                "epoch": epoch,
                "hits": [
                    [h.id, h.score, h.metadata, base64.b64encode(h.payload).decode()] for h in result.hits
                ],
                "answered": result.shards_answered,
                "queried": result.shards_queried,
                "generations": result.generations,
            }
        ).encode()
        if len(payload) <= self.max_result_bytes:
            await self._call("set", self.client.set(key, payload, ex=self.result_ttl_s))

    # --- invalidation -----------------------------------------------------------------------------

    async def invalidate(self, collections: Sequence[str]) -> None:
        """Make every cached result of `collections` unreachable (bump their epochs), before a write is
        acknowledged. Never skipped by the read back-off. Redis down (connection refused or reset twice
        in a row, a fresh connection included): no one can read a cached result, and a restarted Redis
        is empty, so the write may be acknowledged; the bump is remembered and done before this
        gateway reads the cache again. Redis up but not confirming in time: CacheNotInvalidated, and
        the caller must not acknowledge the write."""
        for collection in collections:
            last: BaseException | None = None
            for attempt in range(INVALIDATE_ATTEMPTS):
                try:
                    await within(self.client.incr(f"epoch:{collection}"), 4 * self.timeout_s)
                    self.pending.discard(collection)
                    last = None
                    break
                except RedisConnectionError as exc:
                    self._failed("incr", exc)
                    if attempt == 0:
                        continue  # one reset connection (a stale pooled one) is not Redis down: retry
                    self.pending.add(collection)
                    last = None
                    break
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    self._failed("incr", exc)
                    last = exc
                    await asyncio.sleep(0.05 * 2**attempt)
            if last is not None:
                self.pending.add(collection)
                raise CacheNotInvalidated(
                    "stored, but the result cache (Redis) did not confirm its invalidation in time, so "
                    "searches could still return results from before this write; retrying the write is safe"
                )

    async def _flush(self, collection: str) -> bool:
        try:
            await within(self.client.incr(f"epoch:{collection}"), self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed("incr", exc)
            return False
        self.pending.discard(collection)
        return True

    async def close(self) -> None:
        await self.client.aclose()
