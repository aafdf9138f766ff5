"""Settings of an indexer shard and of the collections it serves, read from env (and a JSON file)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

NORMALIZE_POLICIES = ("normalize", "unit", "none")


@dataclass(frozen=True)
class CollectionConfig:
    """One collection: its dimension, trained index type and search defaults."""

    name: str
    dim: int
    # FAISS factory string of the trained index (inner-product metric).
    factory: str = "IVF1024,PQ48"
    # "normalize": the shard L2-normalises vectors; "unit": vectors must already have norm 1
    # (+-1e-3); "none": stored as given.
    normalize: str = "normalize"
    # Vectors (across all shards) at which the coordinator trains the index; below it, exact search.
    train_threshold: int = 50_000
    # Training sample size (across all shards).
    train_sample: int = 100_000
    # recall@10 target that picks the default nprobe from the measured table.
    recall_target: float = 0.95
    # Exact re-ranking depth: max(rerank_min, rerank_factor * k) candidates per query.
    rerank_factor: int = 10
    rerank_min: int = 100
    # Raw vectors on disk for re-ranking and rebuilds.
    raw_dtype: str = "float32"
    max_metadata_bytes: int = 4096

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"collection name {self.name!r} must be letters, digits, - or _")
        if not 1 <= self.dim <= 65_536:
            raise ValueError(f"collection {self.name}: dim must be in [1, 65536]")
        if self.normalize not in NORMALIZE_POLICIES:
            raise ValueError(f"collection {self.name}: normalize must be one of {NORMALIZE_POLICIES}")
        if self.raw_dtype not in ("float32", "float16"):
            raise ValueError(f"collection {self.name}: raw_dtype must be float32 or float16")

    def rerank_depth(self, k: int) -> int:
        return max(self.rerank_min, self.rerank_factor * k)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CollectionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown collection settings: {sorted(unknown)}")
        return cls(**data)


DEFAULT_COLLECTIONS = (
    # EfficientNet-Lite0 image features (services/embedder).
    CollectionConfig(name="images", dim=1280, factory="IVF1024,PQ64"),
    # all-MiniLM-L6-v2 sentence embeddings.
    CollectionConfig(name="texts", dim=384, factory="IVF1024,PQ48"),
)


def load_collections(path: str | None) -> tuple[CollectionConfig, ...]:
    """Collections from a JSON file (a list of objects with CollectionConfig's fields), or the
    defaults when no file is configured."""
    if not path:
        return DEFAULT_COLLECTIONS
    data = json.loads(Path(path).read_text())
    collections = tuple(CollectionConfig.from_json(c) for c in data)
    names = [c.name for c in collections]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate collection names in {path}")
    return collections


@dataclass(frozen=True)
class ShardSettings:
    shard: int
    num_shards: int
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7100
    metrics_port: int = 9100
    collections: tuple[CollectionConfig, ...] = field(default=DEFAULT_COLLECTIONS)
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

    @classmethod
    def from_env(cls) -> ShardSettings:
        env = os.environ
        try:
            shard = int(env["SEMSEARCH_SHARD"])
            num_shards = int(env["SEMSEARCH_NUM_SHARDS"])
            data_dir = Path(env["SEMSEARCH_DATA_DIR"])
        except KeyError as exc:
            raise SystemExit(f"missing required setting {exc.args[0]}") from None
        if not 0 <= shard < num_shards:
            raise SystemExit(f"SEMSEARCH_SHARD={shard} must be in [0, SEMSEARCH_NUM_SHARDS={num_shards})")
        peers = [p for p in env.get("SEMSEARCH_PEERS", "").split(",") if p.strip()]
        if peers and len(peers) != num_shards:
            raise SystemExit(
                f"SEMSEARCH_PEERS lists {len(peers)} addresses, SEMSEARCH_NUM_SHARDS is {num_shards}"
            )
        return cls(
            shard=shard,
            num_shards=num_shards,
            data_dir=data_dir,
            host=env.get("SEMSEARCH_INDEXER_HOST", "127.0.0.1"),
            port=int(env.get("SEMSEARCH_INDEXER_PORT", "7100")),
            metrics_port=int(env.get("SEMSEARCH_INDEXER_METRICS_PORT", "9100")),
            collections=load_collections(env.get("SEMSEARCH_COLLECTIONS_FILE")),
            max_batch_queries=int(env.get("SEMSEARCH_INDEXER_MAX_BATCH", "512")),
            batch_delay_ms=float(env.get("SEMSEARCH_INDEXER_BATCH_DELAY_MS", "0")),
            snapshot_every_records=int(env.get("SEMSEARCH_INDEXER_SNAPSHOT_EVERY", "50000")),
            max_request_items=int(env.get("SEMSEARCH_INDEXER_MAX_ITEMS", "10000")),
            max_message_bytes=int(env.get("SEMSEARCH_INDEXER_MAX_MESSAGE_BYTES", str(64 * 1024 * 1024))),
            fsync=env.get("SEMSEARCH_INDEXER_FSYNC", "1") != "0",
            search_budget_bytes=int(env.get("SEMSEARCH_INDEXER_SEARCH_BUDGET_BYTES", str(256 << 20))),
            min_free_bytes=int(env.get("SEMSEARCH_INDEXER_MIN_FREE_BYTES", str(256 << 20))),
            peers=tuple(p.strip() for p in env.get("SEMSEARCH_PEERS", "").split(",") if p.strip()),
            auto_train_interval_s=float(env.get("SEMSEARCH_AUTO_TRAIN_INTERVAL_S", "10")),
        )
