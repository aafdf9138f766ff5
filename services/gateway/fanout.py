"""Scatter a call to every shard under one deadline and gather what answered in time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

C = TypeVar("C")
T = TypeVar("T")


@dataclass
class Gathered(Generic[T]):
    """Answers by shard number, and why the others did not answer."""

    answers: dict[int, T] = field(default_factory=dict)
    failures: dict[int, BaseException] = field(default_factory=dict)
    timed_out: set[int] = field(default_factory=set)

    @property
    def coverage(self) -> float:
        total = len(self.answers) + len(self.failures) + len(self.timed_out)
        return len(self.answers) / total if total else 1.0


async def gather_shards(
    clients: Sequence[C], call: Callable[[int, C], Awaitable[T]], timeout_s: float
) -> Gathered[T]:
    """Run `call(shard, client)` for every shard concurrently; shards that raise are in
    `failures`, shards still running at the deadline are cancelled and listed in `timed_out`."""
    tasks = {asyncio.ensure_future(call(i, c)): i for i, c in enumerate(clients)}
    done, pending = await asyncio.wait(tasks, timeout=max(timeout_s, 0.0))
    result: Gathered[T] = Gathered()
    for task in pending:
        task.cancel()
        result.timed_out.add(tasks[task])
    for task in done:
        shard = tasks[task]
        if task.exception() is not None:
            result.failures[shard] = task.exception()
        else:
            result.answers[shard] = task.result()
    return result
