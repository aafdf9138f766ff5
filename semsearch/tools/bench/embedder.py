"""Throughput of the Triton-served embedders against in-process onnxruntime, measured in one run."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from semsearch.datasets import fashion_mnist, fortunes
from semsearch.media import decode_image
from services.embedder.export import CPU_INSTANCES, CPU_THREADS
from services.embedder.inprocess import InProcessEmbedder
from services.gateway.embedder_client import EmbedderClient

# Every timed loop stops at whichever comes first: its time budget or this many batches.
MAX_BATCHES = 100_000


def _inprocess_rate(make_worker: Callable[[], Callable[[], int]], workers: int, seconds: float) -> float:
    """Items/s of `workers` threads, each calling its own worker (built by make_worker, one
    onnxruntime session each) in a loop for `seconds`."""
    fns = [make_worker() for _ in range(workers)]
    for fn in fns:
        fn()  # first run allocates onnxruntime's arenas
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
        await asyncio.gather(*(call() for call in calls))  # connect, first allocations
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
    seconds: float = 5.0,
    rounds: int = 3,
    clients: int = 4,
    batch: int = 32,
) -> tuple[list[tuple[str, ...]], dict]:
    """Measure images/s and texts/s through Triton and in-process; returns table rows and the
    JSON summary.

    The machine is shared and noisy, so the engines are measured in interleaved rounds (in-process,
    then Triton, `rounds` times) and each ratio is the median of the per-round ratios.
    """
    data = fashion_mnist("test")
    pixels = np.stack([decode_image(data.png(i)) for i in range(batch)])
    # Sentence-length texts (at most 200 characters, the bulk of the corpus), evenly spaced.
    sentences = [t for t in fortunes().texts if len(t) <= 200]
    texts = sentences[:: max(1, len(sentences) // batch)][:batch]
    budget = CPU_INSTANCES * CPU_THREADS

    def worker(kind: str, threads: int) -> Callable[[], Callable[[], int]]:
        def make() -> Callable[[], int]:
            embedder = InProcessEmbedder(repository, threads=threads)
            if kind == "images":
                return lambda: len(embedder.embed_pixels(pixels))
            return lambda: len(embedder.embed_texts(texts))

        return make

    calls = {
        "images": lambda client: lambda: client.embed_pixels(pixels),
        "texts": lambda client: lambda: client.embed_texts(texts),
    }
    measured: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        measured.setdefault(key, []).append(value)

    for kind in ("images", "texts"):
        # Warm Triton up (instances allocate their arenas on the first batches).
        asyncio.run(_triton_rate(calls[kind], url, clients, min(seconds, 3.0), batch))
        for _ in range(rounds):
            # The in-process floor gets Triton's thread budget (instances x threads), arranged
            # both ways; the better arrangement is the reference.
            sessions = _inprocess_rate(worker(kind, 1), budget, seconds)
            threads = _inprocess_rate(worker(kind, budget), 1, seconds)
            served = asyncio.run(_triton_rate(calls[kind], url, clients, seconds, batch))
            record(f"{kind}_inprocess_sessions", sessions)
            record(f"{kind}_inprocess_threads", threads)
            record(f"{kind}_inprocess", max(sessions, threads))
            record(f"{kind}_triton", served)
            record(f"ratio_{kind}", served / max(sessions, threads))

    med = {key: statistics.median(values) for key, values in measured.items()}
    summary = {
        "images_per_s_triton": round(med["images_triton"], 1),
        "images_per_s_inprocess": round(med["images_inprocess"], 1),
        "texts_per_s_triton": round(med["texts_triton"], 1),
        "texts_per_s_inprocess": round(med["texts_inprocess"], 1),
        "ratio_images": round(med["ratio_images"], 3),
        "ratio_texts": round(med["ratio_texts"], 3),
        "ratio_images_per_round": [round(r, 3) for r in measured["ratio_images"]],
        "ratio_texts_per_round": [round(r, 3) for r in measured["ratio_texts"]],
        "batch": batch,
        "clients": clients,
        "rounds": rounds,
        "seconds_per_measurement": seconds,
        "thread_budget": budget,
        "triton_instances": CPU_INSTANCES,
        "triton_threads_per_instance": CPU_THREADS,
    }
    rows = []
    for kind in ("images", "texts"):
        rows += [
            (kind, "in-process", f"{budget} sessions x 1 thread", f"{med[f'{kind}_inprocess_sessions']:.1f}"),
            (kind, "in-process", f"1 session x {budget} threads", f"{med[f'{kind}_inprocess_threads']:.1f}"),
            (kind, "triton", f"{clients} clients x batch {batch}", f"{med[f'{kind}_triton']:.1f}"),
            (kind, "ratio", "triton / best in-process", f"{med[f'ratio_{kind}']:.3f}"),
        ]
    return rows, summary
