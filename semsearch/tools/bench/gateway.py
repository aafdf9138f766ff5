"""End-to-end latency and throughput through the gateway, with its floors measured in the same run."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import redis

from semsearch.client import Item, SemsearchClient
from semsearch.datasets import fashion_mnist, fortunes
from semsearch.procs import ManagedProcess
from semsearch.tools import echo as echo_server
from semsearch.tools.bench.cpu import CpuMeter
from semsearch.tools.ingest import create_collection_for
from semsearch.tools.stack import Stack
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc, search_pb2

log = logging.getLogger(__name__)

MAX_CALLS = 20_000
SEARCH_METHOD = "/semsearch.v1.Search/Search"
SHARD_METHOD = "/semsearch.v1.Indexer/Search"
BATCH_METHOD = "/semsearch.v1.Search/SearchBatch"
# Client connections of the concurrent loads (callers spread over them).
CONNECTIONS = 8
# The gateway's worker processes in the scaling measurement.
WORKERS = 2


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def _single(call: Callable[[int], object], seconds: float) -> list[float]:
    """Latencies (s) of one client calling call(i) in a loop, bounded by time and count."""
    for i in range(5):
        call(i)
    times = []
    deadline = time.perf_counter() + seconds
    for i in range(MAX_CALLS):
        if time.perf_counter() >= deadline:
            break
        begin = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - begin)
    return times


async def _concurrent(
    address: str,
    method: str,
    requests: list[bytes],
    clients: int,
    seconds: float,
    meter: CpuMeter | None = None,
) -> tuple[float, dict[str, float]]:
    """Requests/s of `clients` concurrent callers, pre-serialised requests, and the CPU ms per request
    of each process `meter` watches. Callers share CONNECTIONS connections (as clients in several
    processes would), so that the gateway's workers all get some."""
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(min(clients, CONNECTIONS))]
    calls = [ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in channels]
    try:
        await asyncio.gather(
            *(calls[c % len(calls)](requests[c % len(requests)], timeout=30) for c in range(clients))
        )
        done = 0
        if meter is not None:
            meter.start()
        begin = time.perf_counter()
        deadline = begin + seconds

        async def loop(c: int) -> None:
            nonlocal done
            call = calls[c % len(calls)]
            for j in range(MAX_CALLS // clients):
                if time.perf_counter() >= deadline:
                    return
                await call(requests[(c + j * clients) % len(requests)], timeout=30)
                done += 1

        await asyncio.gather(*(loop(c) for c in range(clients)))
        rate = done / (time.perf_counter() - begin)
        return rate, (meter.stop(done) if meter is not None else {})
    finally:
        for channel in channels:
            await channel.close()


def _stack_meter(stack: Stack) -> CpuMeter:
    """CPU of every stack process (with its children: the gateway's workers, Triton's stubs)."""
    return CpuMeter({
        "gateway": [stack.gateway.pid], "shards": [s.process.pid for s in stack.shards],
        "triton": [stack.triton.pid], "redis": [stack.redis.pid], "client": [os.getpid()],
    })  # fmt: skip


def _triton_rate(url: str, kind: str, items: list, seconds: float) -> float:
    """Items/s that Triton embeds by itself: 4 callers each sending batches of 32 back to back (its
    dynamic batcher's best case), over the first 512 items (those the queries use) for about `seconds`;
    texts are batched with texts of similar lengths (a batch is padded to its longest), the batches
    taken in a shuffled order so that every length counts."""
    from services.gateway.embedder_client import EmbedderClient

    items = items[:512]
    if kind == "text":
        items = sorted(items, key=len)
    batches = [items[start : start + 32] for start in range(0, len(items) - 31, 32)]
    order = np.random.default_rng(0).permutation(len(batches))

    async def run() -> float:
        async with EmbedderClient(url, batch_size=32, max_concurrency=4) as client:
            call = client.embed_texts if kind == "text" else client.embed_images
            await call(batches[0])
            done, begin = 0, time.perf_counter()

            async def worker(w: int) -> None:
                nonlocal done
                for n in range(MAX_CALLS):
                    if time.perf_counter() - begin >= seconds:
                        return
                    batch = batches[order[(w + 4 * n) % len(batches)]]
                    await call(batch)
                    done += len(batch)

            await asyncio.gather(*(worker(w) for w in range(4)))
            return done / (time.perf_counter() - begin)

    return asyncio.run(run())


def bench(
    repository: Path,
    *,
    images: int = 2000,
    texts: int = 2000,
    seconds: float = 3.0,
    clients: int = 32,
    shards: int = 2,
) -> tuple[list[tuple[str, ...]], dict]:
    """Start the local stack, load `images` Fashion-MNIST images and `texts` fortunes, then measure
    single-client p50/p99 and `clients`-client QPS of vector, id, text and image queries (caches
    off), the cache-hit path, and the floors: a bare gRPC echo, Redis GET and a shard called
    directly."""
    work = Path(tempfile.mkdtemp(prefix="semsearch-bench-gateway-"))
    stack = Stack(work / "stack", repository, num_shards=shards).start()
    echo: ManagedProcess | None = None
    try:
        client = SemsearchClient(stack.gateway_address, timeout_s=60)
        create_collection_for(client, "images", "fashion-mnist")
        create_collection_for(client, "texts", "fortunes")
        data, corpus = fashion_mnist("train"), fortunes()
        for start in range(0, images, 64):
            batch = range(start, min(images, start + 64))
            client.upsert("images", [Item(id=f"img{i}", image=data.png(i)) for i in batch])
        for start in range(0, texts, 64):
            batch = range(start, min(texts, start + 64))
            client.upsert("texts", [Item(id=f"txt{i}", text=corpus.texts[i]) for i in batch])
        ids = [f"img{i}" for i in range(min(images, 200))]
        stored = client.get("images", ids, include_vectors=True)
        vectors = [list(item.vector.values) for item in stored.items]
        # Queries never seen before, so the embedding cache misses too (the result cache is off).
        unique_texts = corpus.texts[texts:]
        unique_images = [data.png(i) for i in range(images, min(len(data.labels), images + 3000))]

        def req(**kwargs) -> search_pb2.SearchRequest:
            return search_pb2.SearchRequest(k=10, no_cache=True, **kwargs)

        pools = {
            "vector": [req(collection="images", vector=common_pb2.Vector(values=v)) for v in vectors],
            "id": [req(collection="images", id=i) for i in ids],
            "text": [req(collection="texts", text=t) for t in unique_texts],
            "image": [req(collection="images", image=b) for b in unique_images],
        }
        cached_request = search_pb2.SearchRequest(collection="texts", text="a cached query", k=10)
        client.stub.Search(cached_request)
        client.stub.Search(cached_request)

        # Floors: echo with the same response size, Redis GET of a similar payload, a shard directly.
        response_bytes = client.stub.Search(cached_request).SerializeToString()
        echo, echo_address = echo_server.start(work, response_bytes)
        echo_channel = grpc.insecure_channel(echo_address)
        echo_call = echo_channel.unary_unary(
            echo_server.METHOD, request_serializer=None, response_deserializer=None
        )
        request_bytes = cached_request.SerializeToString()
        r = redis.Redis.from_url(stack.redis_url)
        r.set("bench:payload", response_bytes)
        shard_stub = indexer_pb2_grpc.IndexerStub(grpc.insecure_channel(stack.shards[0].address))
        # What the gateway sends: a float32 matrix in, packed hits out.
        shard_requests = [
            indexer_pb2.ShardSearchRequest(
                collection="images", query_matrix=np.asarray([v], dtype="<f4").tobytes(), k=10, packed=True
            )
            for v in vectors
        ]

        single = {
            kind: _single(lambda i, p=pool: client.stub.Search(p[i % len(p)]), seconds)
            for kind, pool in pools.items()
        }
        single["cache_hit"] = _single(lambda i: client.stub.Search(cached_request), seconds)
        single["echo"] = _single(lambda i: echo_call(request_bytes), seconds)
        single["redis_get"] = _single(lambda i: r.get("bench:payload"), seconds)
        single["shard_direct"] = _single(
            lambda i: shard_stub.Search(shard_requests[i % len(shard_requests)]), seconds
        )

        # CPU per query of every process, from their own counters, while the concurrent load runs.
        meter = _stack_meter(stack)
        qps, cpu = {}, {}
        for kind, pool in pools.items():
            serialized = [p.SerializeToString() for p in pool]
            qps[kind], cpu[kind] = asyncio.run(
                _concurrent(stack.gateway_address, SEARCH_METHOD, serialized, clients, seconds, meter)
            )
        qps["cache_hit"], cpu["cache_hit"] = asyncio.run(
            _concurrent(stack.gateway_address, SEARCH_METHOD, [request_bytes], clients, seconds, meter)
        )
        # SearchBatch: 32 vector queries a call, 4 callers; queries/s.
        batches = [
            search_pb2.SearchBatchRequest(
                queries=[pools["vector"][(b * 32 + j) % len(pools["vector"])] for j in range(32)]
            )
            for b in range(8)
        ]
        calls, cpu["batch_of_32"] = asyncio.run(
            _concurrent(
                stack.gateway_address,
                BATCH_METHOD,
                [b.SerializeToString() for b in batches],
                4,
                seconds,
                meter,
            )
        )
        qps["batch_of_32"] = calls * 32
        cpu["batch_of_32"] = {name: ms / 32 for name, ms in cpu["batch_of_32"].items()}
        qps["echo"], _ = asyncio.run(
            _concurrent(echo_address, echo_server.METHOD, [request_bytes], clients, seconds)
        )
        shard_bytes = [s.SerializeToString() for s in shard_requests]
        qps["shard_direct"], cpu["shard_direct"] = asyncio.run(
            _concurrent(stack.shards[0].address, SHARD_METHOD, shard_bytes, clients, seconds, meter)
        )
        # The same vector load on WORKERS gateway processes sharing the port.
        vector_bytes = [p.SerializeToString() for p in pools["vector"]]
        stack.env["SEMSEARCH_GATEWAY_WORKERS"] = str(WORKERS)
        stack.gateway.stop()
        stack.start_gateway()
        meter = _stack_meter(stack)  # the gateway's process is new
        workers_key = f"vector_{WORKERS}_workers"
        qps[workers_key], cpu[workers_key] = asyncio.run(
            _concurrent(stack.gateway_address, SEARCH_METHOD, vector_bytes, clients, seconds, meter)
        )
        # Triton by itself on the same texts and images: what the text and image queries can reach.
        triton_rate = {
            "text": _triton_rate(stack.triton.grpc_url, "text", unique_texts, seconds),
            "image": _triton_rate(stack.triton.grpc_url, "image", unique_images, seconds),
        }
    finally:
        if echo is not None:
            echo.stop()
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)  # the stack's data and logs (tens of MB a run)

    p50 = {k: _pct(v, 50) for k, v in single.items()}
    p99 = {k: _pct(v, 99) for k, v in single.items()}
    summary = {
        "images": images,
        "texts": texts,
        "shards": shards,
        "clients": clients,
        "seconds_per_measurement": seconds,
        **{f"p50_ms_{k}": round(v, 3) for k, v in p50.items()},
        **{f"p99_ms_{k}": round(v, 3) for k, v in p99.items()},
        **{f"qps_{k}": round(v, 1) for k, v in qps.items()},
        "cache_hit_p50_ratio": round(p50["cache_hit"] / (p50["echo"] + p50["redis_get"]), 3),
        "vector_p50_ratio_to_shard": round(p50["vector"] / p50["shard_direct"], 3),
        "vector_qps_ratio_to_shard": round(qps["vector"] / qps["shard_direct"], 3),
        "calls_median_per_kind": int(statistics.median(len(v) for v in single.values())),
        "triton_texts_per_s": round(triton_rate["text"], 1),
        "triton_images_per_s": round(triton_rate["image"], 1),
        "text_qps_ratio_to_triton": round(qps["text"] / triton_rate["text"], 3),
        "image_qps_ratio_to_triton": round(qps["image"] / triton_rate["image"], 3),
        "batch_qps_per_query": round(qps["batch_of_32"], 1),
        "gateway_workers_scaled": WORKERS,
        "vector_qps_workers_ratio": round(qps[f"vector_{WORKERS}_workers"] / qps["vector"], 3),
        "cpu_ms_per_vector_query": round(cpu["vector"]["stack"], 3),
        **{
            f"cpu_ms_per_query_{kind}_{name}": round(ms, 3)
            for kind, by in cpu.items()
            for name, ms in by.items()
        },
    }
    names = ("gateway", "shards", "triton", "redis", "stack", "client")

    def cpu_cells(kind: str) -> tuple[str, ...]:
        return tuple(f"{cpu[kind][n]:.2f}" for n in names) if kind in cpu else ("-",) * len(names)

    rows = [
        (
            kind,
            f"{p50[kind]:.2f}" if kind in p50 else "-",
            f"{p99[kind]:.2f}" if kind in p99 else "-",
            f"{qps[kind]:.0f}" if kind in qps else "-",
            *cpu_cells(kind),
        )
        for kind in (
            "vector",
            f"vector_{WORKERS}_workers",
            "id",
            "text",
            "image",
            "cache_hit",
            "shard_direct",
            "echo",
            "redis_get",
            "batch_of_32",
        )
    ]
    return rows, summary
