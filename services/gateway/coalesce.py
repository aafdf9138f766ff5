"""Coalescing of concurrent calls to a backend: single items with the same key (the options they share)
that arrive while calls of that key are in flight wait for one to finish and then travel together,
as one call, and each caller gets its own result back. A lone item is sent at once (no added wait),
like the shard's own batcher and Triton's dynamic batcher without a queue delay. Used for searches
to each shard (one request with a query matrix) and for query embeddings (one Triton request)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import numpy as np

from services.gateway.domain import ShardHits

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


@dataclass
class _Waiting(Generic[I]):
    item: I
    deadline: float  # time.monotonic()
    future: asyncio.Future = field(repr=False)


class Coalescer(Generic[K, I, O]):
    """`send(key, items, timeout) -> one result per item` is the backend call; at most
    `max_in_flight` of them per key at once, each with at most `max_items` items."""

    def __init__(
        self,
        send: Callable[[K, list[I], float], Awaitable[Sequence[O]]],
        *,
        max_in_flight: int = 2,
        max_items: int = 64,
    ) -> None:
        self.send = send
        self.max_in_flight = max_in_flight
        self.max_items = max_items
        self._waiting: dict[K, list[_Waiting]] = {}
        self._in_flight: dict[K, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self.calls = 0  # backend calls made (for tests and benchmarks)

    async def submit(self, key: K, item: I, timeout: float) -> O:
        """This item's result; cancelling the caller leaves the others alone."""
        waiting = _Waiting(item, time.monotonic() + timeout, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(key, []).append(waiting)
        self._dispatch(key)
        return await waiting.future

    def _dispatch(self, key: K) -> None:
        queue = self._waiting.get(key)
        while queue and self._in_flight.get(key, 0) < self.max_in_flight:
            batch = [w for w in queue[: self.max_items] if not w.future.done()]
            del queue[: self.max_items]
            if not batch:
                continue
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not queue:
            self._waiting.pop(key, None)

    async def _run(self, key: K, batch: list[_Waiting]) -> None:
        try:
            self.calls += 1
            timeout = max(w.deadline for w in batch) - time.monotonic()
            results = await self.send(key, [w.item for w in batch], timeout)
            for waiting, result in zip(batch, results, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(result)
        except Exception as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
        except BaseException:  # cancelled (the gateway is stopping): so are the items
            for waiting in batch:
                waiting.future.cancel()
            raise
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
            self._dispatch(key)


@dataclass(frozen=True)
class SearchOptions:
    """What the queries of one shard request share."""

    collection: str
    k: int
    nprobe: int
    recall_target: float
    include_payloads: bool
    where: str
    exact: bool


class SearchCoalescer(Coalescer[SearchOptions, np.ndarray, ShardHits]):
    """Single queries [dim] to one shard; `send(options, queries [n, dim], timeout)` is the shard request
    and each query gets ShardHits with its own row."""

    def __init__(
        self,
        send: Callable[[SearchOptions, np.ndarray, float], Awaitable[ShardHits]],
        *,
        max_in_flight: int = 2,
        max_queries: int = 64,
    ) -> None:
        async def send_rows(
            options: SearchOptions, queries: list[np.ndarray], timeout: float
        ) -> list[ShardHits]:
            result = await send(options, np.stack(queries), timeout)
            return [replace(result, hits=[row]) for row in result.hits]

        super().__init__(send_rows, max_in_flight=max_in_flight, max_items=max_queries)

    async def search(self, options: SearchOptions, query: np.ndarray, timeout: float) -> ShardHits:
        return await self.submit(options, query, timeout)
