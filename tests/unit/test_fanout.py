"""Fan-out keeps answers that arrive in time and reports failed and late shards."""

import asyncio

import pytest

from services.gateway.fanout import gather_shards


async def call(shard: int, behaviour: str):
    if behaviour == "slow":
        await asyncio.sleep(5)
    if behaviour == "fail":
        raise ConnectionError("shard down")
    return shard * 10


def test_answers_failures_and_timeouts_are_separated():
    result = asyncio.run(gather_shards(["ok", "fail", "slow", "ok"], call, timeout_s=0.2))
    assert result.answers == {0: 0, 3: 30}
    assert set(result.failures) == {1} and isinstance(result.failures[1], ConnectionError)
    assert result.timed_out == {2}
    assert result.coverage == pytest.approx(0.5)


def test_all_answer():
    result = asyncio.run(gather_shards(["ok", "ok"], call, timeout_s=1))
    assert result.coverage == 1.0 and not result.failures and not result.timed_out
