"""The gateway's coalescing of concurrent single-query searches to one shard (services/gateway/
coalesce.py), with a fake shard request: fewer requests, each caller its own row, errors and
cancellations contained."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.gateway.coalesce import SearchCoalescer, SearchOptions
from services.gateway.domain import Hit, ShardHits, ShardInfo

OPTIONS = SearchOptions("images", 10, 0, 0.0, False, "", False)


class FakeShard:
    """Answers each query row with one hit named after the row's first value; takes `delay` seconds."""

    def __init__(self, delay: float = 0.01, fail: Exception | None = None) -> None:
        self.delay, self.fail = delay, fail
        self.batches: list[int] = []

    async def send(self, options: SearchOptions, queries: np.ndarray, timeout: float) -> ShardHits:
        self.batches.append(len(queries))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        hits = [[Hit(f"q{int(q[0])}", 1.0, {})] for q in queries]
        return ShardHits(hits, 3, ShardInfo(0, "exact", 0.0, 10, len(queries), self.delay))


def query(i: int) -> np.ndarray:
    return np.array([i, 0, 0, 0], dtype=np.float32)


def test_concurrent_queries_travel_together_and_each_gets_its_row():
    shard = FakeShard()
    coalescer = SearchCoalescer(shard.send, max_in_flight=1, max_queries=64)

    async def run():
        return await asyncio.gather(*(coalescer.search(OPTIONS, query(i), 5.0) for i in range(40)))

    results = asyncio.run(run())
    assert [r.hits[0][0].id for r in results] == [f"q{i}" for i in range(40)]
    assert all(len(r.hits) == 1 and r.generation == 3 for r in results)
    # The first goes alone at once; the 39 that arrived meanwhile go as one request.
    assert shard.batches == [1, 39] and coalescer.calls == 2


def test_a_lone_query_is_sent_at_once_and_options_are_never_mixed():
    shard = FakeShard(delay=0.0)
    coalescer = SearchCoalescer(shard.send)
    other = SearchOptions("images", 5, 0, 0.0, False, 'label = "Bag"', False)

    async def run():
        first = await coalescer.search(OPTIONS, query(1), 5.0)
        both = await asyncio.gather(
            coalescer.search(OPTIONS, query(2), 5.0), coalescer.search(other, query(3), 5.0)
        )
        return first, both

    first, (a, b) = asyncio.run(run())
    assert first.hits[0][0].id == "q1" and a.hits[0][0].id == "q2" and b.hits[0][0].id == "q3"
    assert shard.batches == [1, 1, 1]


def test_batches_are_bounded():
    shard = FakeShard()
    coalescer = SearchCoalescer(shard.send, max_in_flight=2, max_queries=8)

    async def run():
        await asyncio.gather(*(coalescer.search(OPTIONS, query(i), 5.0) for i in range(30)))

    asyncio.run(run())
    assert max(shard.batches) <= 8 and sum(shard.batches) == 30


def test_a_failed_request_fails_its_queries_and_the_next_ones_go_on():
    shard = FakeShard(fail=RuntimeError("shard 0 is unavailable"))
    coalescer = SearchCoalescer(shard.send, max_in_flight=1)

    async def run():
        return await asyncio.gather(
            *(coalescer.search(OPTIONS, query(i), 5.0) for i in range(5)), return_exceptions=True
        )

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in results)
    shard.fail = None
    assert asyncio.run(coalescer.search(OPTIONS, query(9), 5.0)).hits[0][0].id == "q9"


def test_a_cancelled_caller_leaves_the_others_alone():
    shard = FakeShard(delay=0.05)
    coalescer = SearchCoalescer(shard.send, max_in_flight=1)

    async def run():
        first = asyncio.ensure_future(coalescer.search(OPTIONS, query(0), 5.0))
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(coalescer.search(OPTIONS, query(i), 5.0)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        waiting[1].cancel()  # its deadline passed, say
        done = await asyncio.gather(first, waiting[0], waiting[2])
        return [r.hits[0][0].id for r in done], waiting[1].cancelled()

    ids, cancelled = asyncio.run(run())
    assert ids == ["q0", "q1", "q3"] and cancelled
    assert shard.batches == [1, 2]  # the cancelled query was not sent


def test_the_request_gets_the_latest_deadline_of_its_queries():
    seen = []

    async def send(options, queries, timeout):
        seen.append(timeout)
        await asyncio.sleep(0.01)
        return ShardHits([[Hit("x", 1.0, {})] for _ in queries], 0)

    coalescer = SearchCoalescer(send, max_in_flight=1)

    async def run():
        await asyncio.gather(*(coalescer.search(OPTIONS, query(i), t) for i, t in enumerate((1.0, 1.0, 9.0))))

    asyncio.run(run())
    assert seen[0] == pytest.approx(1.0, abs=0.05) and seen[1] == pytest.approx(9.0, abs=0.1)
