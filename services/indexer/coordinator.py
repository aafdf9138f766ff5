"""Train a collection's index once for all shards: sample across shards, train a template, measure its
recall table, install it on every shard (each rebuilds its slice in the background).

Shard 0 runs this (`AutoTrainer`): by itself when a collection reaches its threshold, or when asked
through its Train RPC. The shards' own state decides whether a collection is trained (any shard holding
a template means yes), so gateways, tools and restarts never train twice. A trained collection is
trained again, on a fresh sample, when its data drifted from what the index was built on (drift.py)
past `retrain_drift`; searches go on against the old index until each shard swaps the new one in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc
import numpy as np

from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from semsearch.rpc import CHANNEL_OPTIONS
from semsearch.v1 import indexer_pb2, indexer_pb2_grpc
from services.indexer import index_ops

log = logging.getLogger(__name__)

HELD_OUT_QUERIES = 500
# Retrain when the shards' drift reaches this (the index quantizes the data 25% worse than when built),
# at most once per RETRAIN_MIN_INTERVAL_S per collection.
DEFAULT_RETRAIN_DRIFT = 1.25
RETRAIN_MIN_INTERVAL_S = 600.0
# Templates of large collections exceed gRPC's default 4 MB message size.
TRAIN_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.max_send_message_length", 1 << 30)]


def _sample(stub: indexer_pb2_grpc.IndexerStub, collection: str, n: int, seed: int) -> np.ndarray:
    chunks = [
        np.frombuffer(chunk.data, dtype="<f4").reshape(chunk.rows, chunk.dim)
        for chunk in stub.Sample(
            indexer_pb2.SampleRequest(collection=collection, n=n, seed=seed), timeout=600
        )
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def collection_stats(
    stubs: Sequence[indexer_pb2_grpc.IndexerStub], name: str
) -> list[indexer_pb2.CollectionStats]:
    """The collection's stats on every shard (Unavailable naming the first shard that does not answer)."""
    out = []
    for i, stub in enumerate(stubs):
        try:
            stats = stub.Stats(indexer_pb2.StatsRequest(), timeout=10)
        except grpc.RpcError as exc:
            raise Unavailable(f"shard {i} does not answer ({exc.code().name})") from exc
        found = [c for c in stats.collections if c.name == name]
        if not found:
            raise Unavailable(f"shard {i} does not serve collection {name!r} yet")
        out.append(found[0])
    return out


def train_collection(
    channels: Sequence[grpc.Channel], config: CollectionConfig, *, seed: int = 0, retrain: bool = False
) -> dict:
    """Train `config.factory` on a sample drawn from every shard in proportion to its size and install
    it everywhere. Refuses when a shard already holds a template (unless `retrain`). Returns a report
    (sample size, timings, depth table, generations)."""
    stubs = [indexer_pb2_grpc.IndexerStub(ch) for ch in channels]
    stats = collection_stats(stubs, config.name)
    if not retrain and any(c.template_id for c in stats):
        raise FailedPrecondition(f"collection {config.name} is trained already (retrain to train it again)")
    counts = [c.count for c in stats]
    total = sum(counts)
    if total < 2 * HELD_OUT_QUERIES:
        raise InvalidArgument(f"collection {config.name} has {total} vectors, too few to train", "collection")
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
    factory = config.factory_for(total)
    log.info("training %s on %d vectors sampled from %d shards", factory, len(train), len(stubs))
    template = index_ops.train_template(train, factory, config.faiss_l2)
    trained = time.perf_counter()
    table = index_ops.measure_depth_table(
        template, train, queries, config.rerank_depth(10), l2=config.faiss_l2
    )
    measured = time.perf_counter()
    log.info("depth -> recall@10 (re-rank %d): %s", config.rerank_depth(10), table)
    request = indexer_pb2.InstallTemplateRequest(
        collection=config.name,
        index=index_ops.serialize(template),
        factory=factory,
        nprobe_table=[indexer_pb2.NprobeRecall(nprobe=n, recall=r) for n, r in table],
    )
    installed = [stub.InstallTemplate(request, timeout=600) for stub in stubs]
    return {
        "collection": config.name,
        "factory": factory,
        "vectors": total,
        "train_vectors": len(train),
        "sample_seconds": sampled - begin,
        "train_seconds": trained - sampled,
        "table_seconds": measured - trained,
        "seconds": measured - begin,
        "depth_table": table,
        "default_depth": index_ops.depth_for_recall(table, config.recall_target),
        "next_generations": [r.next_generation for r in installed],
        "template_id": installed[0].template_id,
    }


def replaced_by(stats: Sequence[indexer_pb2.CollectionStats], template_id: str) -> str:
    """The template a shard installed over `template_id` ("" if none): then that one never serves."""
    # An empty template_id is a shard still loading.
    return next((c.template_id for c in stats if c.template_id not in ("", template_id)), "")


def wait_for_rebuilds(
    channels: Sequence[grpc.Channel], collection: str, template_id: str, timeout_s: float = 3600
) -> None:
    """Block until every shard serves an index built from template `template_id` (train_collection's
    report names it). Not by generation: a rebuild already running when the template arrived swaps in
    a generation first, built from the older template or none."""
    if not template_id:  # shards from before template ids: every index would look like it
        raise ValueError("no template id to wait for (are the shards older than this tool?)")
    stubs = [indexer_pb2_grpc.IndexerStub(ch) for ch in channels]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = collection_stats(stubs, collection)
        if all(c.serving_template_id == template_id for c in stats):
            return
        replaced = replaced_by(stats, template_id)
        if replaced:
            raise FailedPrecondition(
                f"template {template_id} of {collection} was replaced by {replaced} before it served"
            )
        time.sleep(0.2)
    raise TimeoutError(f"rebuild of {collection} not finished after {timeout_s:.0f}s")


class AutoTrainer:
    """Shard 0's training coordinator over all shards (`peers`, in shard order, itself included);
    `collections()` gives the catalog's current collections."""

    def __init__(
        self,
        peers: Sequence[str],
        collections: Callable[[], list[CollectionConfig]],
        retrain_drift: float = DEFAULT_RETRAIN_DRIFT,
    ) -> None:
        self.peers = list(peers)
        self.collections = collections
        self.retrain_drift = retrain_drift
        self._running: set[str] = set()
        self._retrained_at: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _drift(name: str, stats: Sequence[indexer_pb2.CollectionStats]) -> float:
        """The collection's drift: its shards' (drift.py), weighted by their sizes (0 while unknown)."""
        measured = [(c.drift, c.count) for c in stats if c.drift > 0]
        total = sum(n for _, n in measured)
        return sum(d * n for d, n in measured) / total if total else 0.0

    def _config(self, name: str) -> CollectionConfig:
        for config in self.collections():
            if config.name == name:
                return config
        raise NotFound(f"unknown collection {name!r}", "collection")

    def train(self, name: str, *, retrain: bool = False) -> dict:
        """Train `name` now (blocking; run it off the event loop)."""
        config = self._config(name)
        if config.index == "exact":
            raise FailedPrecondition(
                f"collection {name} is searched exactly (index kind exact): nothing to train"
            )
        with self._lock:
            if name in self._running:
                raise FailedPrecondition(f"collection {name} is being trained already")
            self._running.add(name)
        channels = [grpc.insecure_channel(p, options=TRAIN_CHANNEL_OPTIONS) for p in self.peers]
        try:
            return train_collection(channels, config, retrain=retrain)
        finally:
            for channel in channels:
                channel.close()
            with self._lock:
                self._running.discard(name)

    def check(self) -> None:
        """Train every collection that reached its threshold and holds no template on any shard."""
        channels = [grpc.insecure_channel(p, options=CHANNEL_OPTIONS) for p in self.peers]
        try:
            stubs = [indexer_pb2_grpc.IndexerStub(ch) for ch in channels]
            for config in self.collections():
                if config.index == "exact":
                    continue
                name = config.name
                try:
                    stats = collection_stats(stubs, name)
                except Unavailable as exc:
                    log.info("auto-train of %s waits: %s", name, exc)
                    continue
                total = sum(c.count for c in stats)
                retrain = False
                if any(c.template_id for c in stats):
                    drift = self._drift(name, stats)
                    if drift < self.retrain_drift or any(c.rebuilding for c in stats):
                        continue
                    if time.monotonic() - self._retrained_at.get(name, -1e9) < RETRAIN_MIN_INTERVAL_S:
                        continue
                    log.info("collection %s drifted from its index (%.2f >= %.2f): training it again on "
                             "today's data", name, drift, self.retrain_drift)  # fmt: skip
                    self._retrained_at[name] = time.monotonic()
                    retrain = True
                elif total < config.train_threshold:
                    continue
                else:
                    log.info("collection %s reached %d vectors: building its index", name, total)
                try:
                    report = self.train(name, retrain=retrain)
                    log.info("collection %s: template installed, rebuilding to generations %s", name,
                             report["next_generations"])  # fmt: skip
                except FailedPrecondition as exc:
                    log.info("auto-train of %s skipped: %s", name, exc)
                except Exception:
                    log.exception("auto-train of %s failed; retrying at the next check", name)
        finally:
            for channel in channels:
                channel.close()
