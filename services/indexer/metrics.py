"""Prometheus metrics of an indexer shard (names prefixed semsearch_indexer_, unit-suffixed)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

SEARCH_SECONDS = Histogram(
    "semsearch_indexer_search_duration_seconds",
    "Time of one coalesced search call (FAISS search + exact re-rank), by collection.",
    ["collection"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
REQUEST_SECONDS = Histogram(
    "semsearch_indexer_request_duration_seconds",
    "Time of one gRPC request in the shard, by method.",
    ["method"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_QUERIES = Histogram(
    "semsearch_indexer_search_batch_queries",
    "Queries per coalesced FAISS call.",
    ["collection"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
VECTORS = Gauge("semsearch_indexer_vectors", "Stored (live) vectors, by collection.", ["collection"])
ROWS = Gauge(
    "semsearch_indexer_rows",
    "Rows of the raw-vector file (live vectors plus dead rows awaiting compaction), by collection.",
    ["collection"],
)
WRITABLE = Gauge(
    "semsearch_indexer_writable",
    "1 while the collection takes writes, 0 after a failed log fsync or apply (until a restart).",
    ["collection"],
)
DISK_FREE = Gauge(
    "semsearch_indexer_disk_free_bytes", "Free bytes on the filesystem of the shard's data directory."
)
GENERATION = Gauge("semsearch_indexer_generation", "Index generation serving searches.", ["collection"])
REBUILD_PROGRESS = Gauge(
    "semsearch_indexer_rebuild_progress_ratio", "Progress of the running rebuild (0..1).", ["collection"]
)
REBUILD_SECONDS = Histogram(
    "semsearch_indexer_rebuild_duration_seconds",
    "Time to rebuild a collection's slice from a template.",
    ["collection"],
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800),
)
LOG_BYTES = Gauge("semsearch_indexer_log_bytes", "Size of the write-ahead log on disk.", ["collection"])
WRITES = Counter("semsearch_indexer_writes_total", "Items written, by operation.", ["collection", "op"])
REJECTED = Counter(
    "semsearch_indexer_rejected_requests_total",
    "Requests answered with an error, by code.",
    ["method", "code"],
)

ESTIMATED_RECALL = Gauge(
    "semsearch_indexer_estimated_recall",
    "recall@k of sampled live index searches re-run exactly (mean of the last 200 samples), by collection.",
    ["collection"],
)
RECALL_SAMPLES = Counter(
    "semsearch_indexer_recall_samples_total",
    "Live searches re-run exactly by the recall monitor.",
    ["collection"],
)
EPS_EXTRA = Gauge(
    "semsearch_indexer_depth_eps_extra",
    "What the recall monitor added to the calibrated eps of the per-query depth rule, by collection.",
    ["collection"],
)

# Series labelled by collection alone, and the operations WRITES counts.
_BY_COLLECTION = (SEARCH_SECONDS, BATCH_QUERIES, VECTORS, ROWS, WRITABLE, GENERATION, REBUILD_PROGRESS)
_BY_COLLECTION += (REBUILD_SECONDS, LOG_BYTES, ESTIMATED_RECALL, RECALL_SAMPLES, EPS_EXTRA)
WRITE_OPS = ("upsert", "delete")


def forget(collection: str) -> None:
    """Remove a dropped collection's series, so dashboards stop showing it."""
    for metric in _BY_COLLECTION:
        with contextlib.suppress(KeyError):
            metric.remove(collection)
    for op in WRITE_OPS:
        with contextlib.suppress(KeyError):
            WRITES.remove(collection, op)
