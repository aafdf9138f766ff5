"""The search batcher with a fake collection, and the gRPC interceptors on an in-process server."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from semsearch.core.errors import InvalidArgument, ResourceExhausted
from semsearch.rpc import ApiKeyInterceptor, ErrorMappingInterceptor, InFlightLimiter
from services.indexer.batcher import SearchBatcher


@dataclass
class Outcome:
    scores: np.ndarray
    slots: np.ndarray


class FakeCollection:
    """Records each FAISS-call batch; the first call waits until released, so requests pile up."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self.release = threading.Event()

    def search(self, queries, k, nprobe, depth, where=None, target=0.0, exact=False):
        if not self.calls:
            self.release.wait(10)
        self.calls.append((len(queries), k, nprobe, depth))
        if k == 99:
            raise ResourceExhausted("too big")
        # Each query's "result" is its own first value, so the split back can be checked.
        return Outcome(queries[:, :1].repeat(k, axis=1), np.zeros((len(queries), k), dtype=np.int64))


def test_concurrent_searches_are_coalesced_and_split_back():
    async def scenario():
        collection = FakeCollection()
        batcher = SearchBatcher(collection, max_queries=512)
        first = asyncio.create_task(batcher.search(np.full((1, 4), 100.0, np.float32), 5, 8, 50))
        await asyncio.sleep(0.05)  # the first call runs (blocked); the next ones queue
        rest = [
            asyncio.create_task(batcher.search(np.full((2, 4), float(i), np.float32), 5, 8, 50))
            for i in range(10)
        ]
        odd = asyncio.create_task(batcher.search(np.full((1, 4), 7.0, np.float32), 3, 8, 50))
        failing = asyncio.create_task(batcher.search(np.full((1, 4), 1.0, np.float32), 99, 8, 50))
        await asyncio.sleep(0.05)
        collection.release.set()
        results = await asyncio.gather(first, *rest, odd)
        with pytest.raises(ResourceExhausted):
            await failing
        batcher.close()
        return collection.calls, results

    calls, results = asyncio.run(scenario())
    # One call for the first request, then one per (k, nprobe, depth) group of everything that queued.
    assert calls[0] == (1, 5, 8, 50)
    assert sorted(calls[1:]) == sorted([(20, 5, 8, 50), (1, 3, 8, 50), (1, 99, 8, 50)])
    for i, result in enumerate(results[1:11]):
        rows = result.outcome.scores[result.start : result.end]
        assert rows.shape == (2, 5) and (rows == float(i)).all()
        assert result.batch_queries == 20
    assert results[-1].outcome.scores[results[-1].start, 0] == 7.0


class Echo:
    """A tiny service: Echo/Ok answers, Echo/Bad raises a domain error, Echo/Bug a plain exception,
    Echo/Slow waits."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def handler(self) -> grpc.GenericRpcHandler:
        async def ok(request, context):
            return b"ok:" + request

        async def bad(request, context):
            raise InvalidArgument("must be positive", "k")

        async def bug(request, context):
            raise ValueError("secret internal detail")

        async def slow(request, context):
            await self.gate.wait()
            return b"done"

        methods = {"Ok": ok, "Bad": bad, "Bug": bug, "Slow": slow}
        return grpc.method_handlers_generic_handler(
            "test.Echo", {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
        )


KEY = "unit-test-key-0123456789"


def test_interceptors_authenticate_limit_and_map_errors():
    registry = CollectorRegistry()
    seconds = Histogram("t_seconds", "", ["method"], registry=registry)
    rejected = Counter("t_rejected", "", ["method", "code"], registry=registry)
    in_flight = Gauge("t_in_flight", "", registry=registry)
    methods = frozenset({"Ok", "Bad", "Bug", "Slow"})

    async def scenario():
        echo = Echo()
        server = grpc.aio.server(
            interceptors=[
                ApiKeyInterceptor([KEY], rejected, methods),
                InFlightLimiter(1, in_flight, rejected, methods),
                ErrorMappingInterceptor(seconds, rejected, methods),
            ]
        )
        server.add_generic_rpc_handlers((echo.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        key = (("x-api-key", KEY),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            def call(name):
                return channel.unary_unary(
                    f"/test.Echo/{name}", request_serializer=None, response_deserializer=None
                )

            async def status(name, metadata=key):
                try:
                    await call(name)(b"x", metadata=metadata, timeout=5)
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details()
                return grpc.StatusCode.OK, ""

            out = {
                "ok": await call("Ok")(b"x", metadata=key, timeout=5),
                "no key": await status("Ok", ()),
                "bad": await status("Bad"),
                "bug": await status("Bug"),
                "invented": await status("Invented"),
            }
            slow = asyncio.create_task(status("Slow"))
            await asyncio.sleep(0.1)
            out["over limit"] = await status("Ok")
            echo.gate.set()
            out["slow"] = await slow
        await server.stop(1)
        return out

    out = asyncio.run(scenario())
    assert out["ok"] == b"ok:x"
    assert out["no key"][0] == grpc.StatusCode.UNAUTHENTICATED
    assert out["bad"] == (grpc.StatusCode.INVALID_ARGUMENT, "k: must be positive")
    assert out["bug"][0] == grpc.StatusCode.INTERNAL and "secret" not in out["bug"][1]
    assert out["invented"][0] == grpc.StatusCode.UNIMPLEMENTED
    assert out["over limit"][0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert out["slow"][0] == grpc.StatusCode.OK
    labels = {s.labels["method"] for m in registry.collect() for s in m.samples if "method" in s.labels}
    assert labels <= methods | {"unknown"} and "Invented" not in labels
