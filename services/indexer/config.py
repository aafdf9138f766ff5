"""Settings of an indexer shard, read from the environment once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semsearch.core.settings import Env


@dataclass(frozen=True)
class ShardSettings:
    shard: int
    num_shards: int
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7100
    metrics_port: int = 9100
    # Queries per coalesced FAISS call, and how long a batch may wait for more (0: batch only what
    # queued while the previous call ran).
    max_batch_queries: int = 512
    batch_delay_ms: float = 0.0
    # Snapshot when this many log records accumulated since the last one (checked every second).
    snapshot_every_records: int = 50_000
    max_request_items: int = 10_000
    max_message_bytes: int = 64 * 1024 * 1024
    fsync: bool = True
    # Memory one coalesced search may use for candidate vectors (RESOURCE_EXHAUSTED beyond).
    search_budget_bytes: int = 256 << 20
    # Writes are refused (RESOURCE_EXHAUSTED) while the data directory has less free space than this.
    min_free_bytes: int = 256 << 20
    # Every shard's address in shard order (this one included). Shard 0 uses them to coordinate
    # training; empty on a single shard means this shard alone.
    peers: tuple[str, ...] = ()
    # How often shard 0 checks whether a collection reached its training threshold.
    auto_train_interval_s: float = 10.0
    # Share of live index searches the recall monitor re-runs exactly, and at most how many a second.
    recall_sample_rate: float = 0.01
    recall_samples_per_s: float = 2.0
    # Shard 0 trains a collection again when its data drifted this far from its index (drift.py).
    retrain_drift: float = 1.25
    # A filter matching at most this many items of a slice is answered by scoring them exactly.
    exact_filter_max: int = 5_000

    @classmethod
    def from_env(cls, environ=None) -> ShardSettings:
        env = Env(environ)
        env.required("SEMSEARCH_SHARD", "SEMSEARCH_NUM_SHARDS", "SEMSEARCH_DATA_DIR")
        num_shards = env.int("SEMSEARCH_NUM_SHARDS", 1, minimum=1)
        shard = env.int("SEMSEARCH_SHARD", 0, minimum=0)
        if shard >= num_shards:
            raise SystemExit(f"SEMSEARCH_SHARD={shard} must be in [0, SEMSEARCH_NUM_SHARDS={num_shards})")
        peers = env.list("SEMSEARCH_PEERS")
        if peers and len(peers) != num_shards:
            raise SystemExit(
                f"SEMSEARCH_PEERS lists {len(peers)} addresses, SEMSEARCH_NUM_SHARDS is {num_shards}"
            )
        return cls(
            shard=shard,
            num_shards=num_shards,
            data_dir=Path(env.str("SEMSEARCH_DATA_DIR")),
            host=env.str("SEMSEARCH_INDEXER_HOST", "127.0.0.1"),
            port=env.int("SEMSEARCH_INDEXER_PORT", 7100, minimum=0),
            metrics_port=env.int("SEMSEARCH_INDEXER_METRICS_PORT", 9100, minimum=0),
            max_batch_queries=env.int("SEMSEARCH_INDEXER_MAX_BATCH", 512, minimum=1),
            batch_delay_ms=env.float("SEMSEARCH_INDEXER_BATCH_DELAY_MS", 0.0, minimum=0),
            snapshot_every_records=env.int("SEMSEARCH_INDEXER_SNAPSHOT_EVERY", 50_000, minimum=1),
            max_request_items=env.int("SEMSEARCH_INDEXER_MAX_ITEMS", 10_000, minimum=1),
            max_message_bytes=env.int("SEMSEARCH_INDEXER_MAX_MESSAGE_BYTES", 64 << 20, minimum=1024),
            fsync=env.bool("SEMSEARCH_INDEXER_FSYNC", True),
            search_budget_bytes=env.int("SEMSEARCH_INDEXER_SEARCH_BUDGET_BYTES", 256 << 20, minimum=1 << 16),
            min_free_bytes=env.int("SEMSEARCH_INDEXER_MIN_FREE_BYTES", 256 << 20, minimum=0),
            peers=peers,
            auto_train_interval_s=env.float("SEMSEARCH_AUTO_TRAIN_INTERVAL_S", 10.0, minimum=0.1),
            recall_sample_rate=env.float("SEMSEARCH_RECALL_SAMPLE_RATE", 0.01, minimum=0),
            recall_samples_per_s=env.float("SEMSEARCH_RECALL_SAMPLES_PER_S", 2.0, minimum=0),
            retrain_drift=env.float("SEMSEARCH_RETRAIN_DRIFT", 1.25, minimum=1.0),
            exact_filter_max=env.int("SEMSEARCH_INDEXER_EXACT_FILTER_MAX", 5_000, minimum=0),
        )
