"""Coalescing of concurrent searches to one shard: single queries with the same options that arrive
while requests of those options are in flight wait for one to finish and then travel together, as one
request with a query matrix, and each gets its own row back. A lone query is sent at once (no added
wait), like the shard's own batcher and Triton's dynamic batcher without a queue delay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from services.gateway.domain import ShardHits


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


@dataclass
class _Waiting:
    query: np.ndarray
    deadline: float  # time.monotonic()
    future: asyncio.Future = field(repr=False)


class SearchCoalescer:
    """`send(options, queries [n, dim], timeout)` is the shard request; at most `max_in_flight` of them
    per set of options at once (a shard searches a collection's batches one after another anyway),
    each with at most `max_queries` queries."""

    def __init__(
        self,
        send: Callable[[SearchOptions, np.ndarray, float], Awaitable[ShardHits]],
        *,
        max_in_flight: int = 2,
        max_queries: int = 64,
    ) -> None:
        self.send = send
        self.max_in_flight = max_in_flight
        self.max_queries = max_queries
        self._waiting: dict[SearchOptions, list[_Waiting]] = {}
        self._in_flight: dict[SearchOptions, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self.requests = 0  # shard requests sent (for tests and metrics)

    async def search(self, options: SearchOptions, query: np.ndarray, timeout: float) -> ShardHits:
        """This query's hits (ShardHits with one row); cancelling the caller leaves the others alone."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(query, time.monotonic() + timeout, loop.create_future())
        self._waiting.setdefault(options, []).append(waiting)
        self._dispatch(options)
        return await waiting.future

    def _dispatch(self, options: SearchOptions) -> None:
        queue = self._waiting.get(options)
        while queue and self._in_flight.get(options, 0) < self.max_in_flight:
            batch = [w for w in queue[: self.max_queries] if not w.future.done()]
            del queue[: self.max_queries]
            if not batch:
                continue
            self._in_flight[options] = self._in_flight.get(options, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(options, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not queue:
            self._waiting.pop(options, None)

    async def _run(self, options: SearchOptions, batch: list[_Waiting]) -> None:
        try:
            self.requests += 1
            timeout = max(w.deadline for w in batch) - time.monotonic()
            result = await self.send(options, np.stack([w.query for w in batch]), timeout)
            for row, waiting in enumerate(batch):
                if not waiting.future.done():
                    waiting.future.set_result(replace(result, hits=[result.hits[row]]))
        except Exception as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
        except BaseException:  # cancelled (the gateway is stopping): so are the queries
            for waiting in batch:
                waiting.future.cancel()
            raise
        finally:
            self._in_flight[options] -= 1
            if not self._in_flight[options]:
                del self._in_flight[options]
            self._dispatch(options)
