"""Redis caches of query embeddings and search results; Redis trouble means uncached, never failed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway import metrics

log = logging.getLogger(__name__)

# After a Redis error, skip the cache for this long instead of paying a timeout on every request.
BACKOFF_S = 1.0


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Cache:
    """Keys:
    - ``emb:<model version>:<sha256 of image bytes or normalised text>`` -> float32 vector bytes;
    - ``epoch:<collection>`` -> counter bumped by every write through any gateway;
    - ``res:<collection>:<sha256 of the query, the epoch and the shard generations>`` -> response.
    A write or an index swap changes the key of every result computed before it, so stale results
    become unreachable without a flush and expire by TTL (Redis runs with an LRU memory cap)."""

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

    async def _call(self, op: str, coro):
        if time.monotonic() < self._down_until:
            coro.close()
            metrics.CACHE_ERRORS.labels(op).inc()
            return None
        try:
            return await asyncio.wait_for(coro, self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            metrics.CACHE_ERRORS.labels(op).inc()
            if time.monotonic() >= self._down_until:
                log.warning(
                    "redis %s failed (%s); serving uncached for %.0fs", op, type(exc).__name__, BACKOFF_S
                )
            self._down_until = time.monotonic() + BACKOFF_S
            return None

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

    async def epoch(self, collection: str) -> int | None:
        value = await self._call("get", self.client.get(f"epoch:{collection}"))
        return int(value) if value is not None else (0 if time.monotonic() >= self._down_until else None)

    async def bump_epoch(self, collection: str) -> None:
        await self._call("incr", self.client.incr(f"epoch:{collection}"))

    async def get_result(self, collection: str, digest: str) -> bytes | None:
        data = await self._call("get", self.client.get(f"res:{collection}:{digest}"))
        metrics.CACHE_REQUESTS.labels("result", "hit" if data is not None else "miss").inc()
        return data

    async def set_result(self, collection: str, digest: str, payload: bytes) -> None:
        if len(payload) <= self.max_result_bytes:
            await self._call(
                "set", self.client.set(f"res:{collection}:{digest}", payload, ex=self.result_ttl_s)
            )

    async def close(self) -> None:
        await self.client.aclose()
