"""Train a collection's index once for all shards: sample across shards, train a template, measure
its recall table, install it on every shard (each rebuilds its slice in the background)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc
import numpy as np

from semsearch.v1 import indexer_pb2, indexer_pb2_grpc
from services.indexer import index_ops
from services.indexer.config import CollectionConfig

log = logging.getLogger(__name__)

HELD_OUT_QUERIES = 500


def _sample(stub: indexer_pb2_grpc.IndexerStub, collection: str, n: int, seed: int) -> np.ndarray:
    chunks = [
        np.frombuffer(chunk.data, dtype="<f4").reshape(chunk.rows, chunk.dim)
        for chunk in stub.Sample(indexer_pb2.SampleRequest(collection=collection, n=n, seed=seed))
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def train_collection(channels: Sequence[grpc.Channel], config: CollectionConfig, *, seed: int = 0) -> dict:
    """Train `config.factory` on a sample drawn from every shard in proportion to its size and
    install it everywhere. Returns a report (sample size, timings, nprobe table, generations)."""
    stubs = [indexer_pb2_grpc.IndexerStub(ch) for ch in channels]
    counts = []
    for stub in stubs:
        stats = stub.Stats(indexer_pb2.StatsRequest())
        counts.append(next(c.count for c in stats.collections if c.name == config.name))
    total = sum(counts)
    if total < 2 * HELD_OUT_QUERIES:
        raise ValueError(f"collection {config.name} has {total} vectors, too few to train")
    wanted = min(config.train_sample + HELD_OUT_QUERIES, total)
    begin = time.perf_counter()
    parts = [
        _sample(stub, config.name, max(1, round(wanted * count / total)), seed + i)
        for i, (stub, count) in enumerate(zip(stubs, counts))
        if count
    ]
    sample = np.concatenate([p for p in parts if len(p)]).astype(np.float32)
    rng = np.random.default_rng(seed)
    rng.shuffle(sample)
    queries, train = sample[:HELD_OUT_QUERIES], sample[HELD_OUT_QUERIES:]
    sampled = time.perf_counter()
    log.info("training %s on %d vectors sampled from %d shards", config.factory, len(train), len(stubs))
    template = index_ops.train_template(train, config.factory)
    trained = time.perf_counter()
    table = index_ops.measure_nprobe_table(template, train, queries, config.rerank_depth(10))
    measured = time.perf_counter()
    log.info("nprobe -> recall@10 (re-rank %d): %s", config.rerank_depth(10), table)
    request = indexer_pb2.InstallTemplateRequest(
        collection=config.name,
        index=index_ops.serialize(template),
        factory=config.factory,
        nprobe_table=[indexer_pb2.NprobeRecall(nprobe=n, recall=r) for n, r in table],
    )
    generations = [stub.InstallTemplate(request).next_generation for stub in stubs]
    return {
        "collection": config.name,
        "factory": config.factory,
        "vectors": total,
        "train_vectors": len(train),
        "sample_seconds": sampled - begin,
        "train_seconds": trained - sampled,
        "table_seconds": measured - trained,
        "nprobe_table": table,
        "default_nprobe": index_ops.nprobe_for_recall(table, config.recall_target),
        "next_generations": generations,
    }


def wait_for_rebuilds(
    channels: Sequence[grpc.Channel], collection: str, generations: Sequence[int], timeout_s: float = 3600
) -> None:
    """Block until every shard serves at least the given generation of `collection`."""
    stubs = [indexer_pb2_grpc.IndexerStub(ch) for ch in channels]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = []
        for stub in stubs:
            stats = stub.Stats(indexer_pb2.StatsRequest())
            current.append(next(c.generation for c in stats.collections if c.name == collection))
        if all(c >= g for c, g in zip(current, generations)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"rebuild of {collection} not finished after {timeout_s:.0f}s")
