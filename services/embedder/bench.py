"""Throughput of the Triton-served embedders against in-process onnxruntime, measured in one run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from semsearch.datasets import fashion_mnist, fortunes
from services.embedder.client import EmbedderClient
from services.embedder.export import CPU_INSTANCES, CPU_THREADS
from services.embedder.inprocess import InProcessEmbedder
from services.embedder.preprocess import decode_image

# Every timed loop stops at whichever comes first: its time budget or this many batches.
MAX_BATCHES = 100_000


def _inprocess_rate(make_worker: Callable[[], Callable[[], int]], workers: int, seconds: float) -> float:
    """Items/s of `workers` threads, each calling its own worker (built by make_worker, one
    onnxruntime session each) in a loop for `seconds`."""
    fns = [make_worker() for _ in range(workers)]
    for fn in fns:
        fn()  # warm-up
    counts = [0] * workers
    start = threading.Barrier(workers + 1)
    deadline = [0.0]

    def loop(i: int) -> None:
        start.wait()
        for _ in range(MAX_BATCHES):
            if time.perf_counter() >= deadline[0]:
                break
            counts[i] += fns[i]()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    begin = time.perf_counter()
    deadline[0] = begin + seconds
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - begin)


async def _triton_rate(
    make_call: Callable[[EmbedderClient], Callable[[], object]],
    url: str,
    clients: int,
    seconds: float,
    batch: int,
) -> float:
    """Items/s of `clients` concurrent callers, each with its own gRPC channel."""
    conns = [EmbedderClient(url, batch_size=batch, max_concurrency=1) for _ in range(clients)]
    try:
        calls = [make_call(c) for c in conns]
        await asyncio.gather(*(call() for call in calls))  # warm-up
        count = 0
        begin = time.perf_counter()
        deadline = begin + seconds

        async def loop(call) -> None:
            nonlocal count
            for _ in range(MAX_BATCHES):
                if time.perf_counter() >= deadline:
                    return
                await call()
                count += batch

        await asyncio.gather(*(loop(call) for call in calls))
        return count / (time.perf_counter() - begin)
    finally:
        for c in conns:
            await c.close()


def bench(
    url: str,
    repository: Path,
    *,
    seconds: float = 8.0,
    clients: int = 4,
    batch: int = 32,
) -> tuple[list[tuple[str, ...]], dict]:
    """Measure images/s and texts/s through Triton and in-process; returns table rows and the
    JSON summary."""
    data = fashion_mnist("test")
    pixels = np.stack([decode_image(data.png(i)) for i in range(batch)])
    corpus = fortunes()
    texts = corpus.texts[:: max(1, len(corpus.texts) // batch)][:batch]
    budget = CPU_INSTANCES * CPU_THREADS

    def image_worker(threads: int) -> Callable[[], Callable[[], int]]:
        def make() -> Callable[[], int]:
            embedder = InProcessEmbedder(repository, threads=threads)
            return lambda: len(embedder.embed_pixels(pixels))

        return make

    def text_worker(threads: int) -> Callable[[], Callable[[], int]]:
        def make() -> Callable[[], int]:
            embedder = InProcessEmbedder(repository, threads=threads)
            return lambda: len(embedder.embed_texts(texts))

        return make

    # The in-process floor gets the same thread budget as Triton's instances (instances x
    # threads), arranged both ways; the better arrangement is the reference.
    results: dict[str, float] = {}
    results["images_inprocess_sessions"] = _inprocess_rate(image_worker(1), budget, seconds)
    results["images_inprocess_threads"] = _inprocess_rate(image_worker(budget), 1, seconds)
    results["texts_inprocess_sessions"] = _inprocess_rate(text_worker(1), budget, seconds)
    results["texts_inprocess_threads"] = _inprocess_rate(text_worker(budget), 1, seconds)

    def image_call(client: EmbedderClient):
        return lambda: client.embed_pixels(pixels)

    def text_call(client: EmbedderClient):
        return lambda: client.embed_texts(texts)

    results["images_triton"] = asyncio.run(_triton_rate(image_call, url, clients, seconds, batch))
    results["texts_triton"] = asyncio.run(_triton_rate(text_call, url, clients, seconds, batch))

    images_inprocess = max(results["images_inprocess_sessions"], results["images_inprocess_threads"])
    texts_inprocess = max(results["texts_inprocess_sessions"], results["texts_inprocess_threads"])
    summary = {
        "images_per_s_triton": round(results["images_triton"], 1),
        "images_per_s_inprocess": round(images_inprocess, 1),
        "texts_per_s_triton": round(results["texts_triton"], 1),
        "texts_per_s_inprocess": round(texts_inprocess, 1),
        "ratio_images": round(results["images_triton"] / images_inprocess, 3),
        "ratio_texts": round(results["texts_triton"] / texts_inprocess, 3),
        "batch": batch,
        "clients": clients,
        "seconds_per_measurement": seconds,
        "thread_budget": budget,
        "triton_instances": CPU_INSTANCES,
        "triton_threads_per_instance": CPU_THREADS,
    }
    rows = [
        ("images", "in-process", f"{budget} sessions x 1 thread",
         f"{results['images_inprocess_sessions']:.1f}"),
        ("images", "in-process", f"1 session x {budget} threads",
         f"{results['images_inprocess_threads']:.1f}"),
        ("images", "triton", f"{clients} clients, batch {batch}", f"{results['images_triton']:.1f}"),
        ("texts", "in-process", f"{budget} sessions x 1 thread",
         f"{results['texts_inprocess_sessions']:.1f}"),
        ("texts", "in-process", f"1 session x {budget} threads",
         f"{results['texts_inprocess_threads']:.1f}"),
        ("texts", "triton", f"{clients} clients, batch {batch}", f"{results['texts_triton']:.1f}"),
    ]  # fmt: skip
    return rows, summary
