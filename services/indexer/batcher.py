"""Coalesce concurrent search requests of a collection into one FAISS call (micro-batching)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from semsearch.core.filters import Node
from services.indexer import metrics
from services.indexer.collection import Collection
from services.indexer.searches import SearchOutcome


@dataclass
class _Pending:
    queries: np.ndarray
    k: int
    depth: int
    rerank: int
    future: asyncio.Future = field(repr=False)
    where: Node | None = None
    target: float = 0.0
    exact: bool = False

    @property
    def group(self) -> tuple:
        """Requests searched together share these."""
        return (self.k, self.depth, self.rerank, self.where, self.target, self.exact)


@dataclass
class BatchedResult:
    """This request's rows of a coalesced search, and how many queries the FAISS call held."""

    outcome: SearchOutcome
    start: int
    end: int
    batch_queries: int


class SearchBatcher:
    """Requests queue while the previous FAISS call runs; the next call takes them all (up to
    `max_queries`), grouped by what they share (k, depth, re-rank depth, filter, recall target).
    Like Triton's dynamic batcher, it optionally waits `delay_s` for more to arrive. Each collection
    has one worker thread, so FAISS work of a collection is never interleaved and OpenMP threads are
    not oversubscribed by callers."""

    def __init__(self, collection: Collection, *, max_queries: int = 512, delay_s: float = 0.0) -> None:
        self.collection = collection
        self.max_queries = max_queries
        self.delay_s = delay_s
        self._pending: list[_Pending] = []
        self._draining = False
        self._drain_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"search-{collection.name}")

    async def search(
        self,
        queries: np.ndarray,
        k: int,
        depth: int,
        rerank: int,
        where: Node | None = None,
        target: float = 0.0,
        exact: bool = False,
    ) -> BatchedResult:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(queries, k, depth, rerank, future, where, target, exact))
        if not self._draining:
            self._draining = True
            # Keep a reference: the event loop holds tasks weakly, a dropped one can be collected
            # mid-flight.
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                batch, total = [], 0
                while self._pending and (
                    not batch or total + len(self._pending[0].queries) <= self.max_queries
                ):
                    p = self._pending.pop(0)
                    batch.append(p)
                    total += len(p.queries)
                results = await loop.run_in_executor(self._executor, self._run, batch)
                for p, result in zip(batch, results):
                    if p.future.done():
                        continue
                    if isinstance(result, BaseException):
                        p.future.set_exception(result)
                    else:
                        p.future.set_result(result)
        finally:
            self._draining = False

    def _run(self, batch: list[_Pending]) -> list[BatchedResult | BaseException]:
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(batch):
            groups.setdefault(p.group, []).append(i)
        results: list[BatchedResult | BaseException] = [None] * len(batch)  # type: ignore[list-item]
        name = self.collection.name
        for (k, depth, rerank, where, target, exact), members in groups.items():
            queries = np.concatenate([batch[i].queries for i in members])
            begin = time.perf_counter()
            try:
                outcome = self.collection.search(queries, k, depth, rerank, where, target, exact)
            except Exception as exc:
                for i in members:
                    results[i] = exc
                continue
            metrics.SEARCH_SECONDS.labels(name).observe(time.perf_counter() - begin)
            metrics.BATCH_QUERIES.labels(name).observe(len(queries))
            start = 0
            for i in members:
                end = start + len(batch[i].queries)
                results[i] = BatchedResult(outcome, start, end, len(queries))
                start = end
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=True)
