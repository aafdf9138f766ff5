"""A shard: its slice of every configured collection, search batchers and snapshot scheduling."""

from __future__ import annotations

import asyncio
import logging
import shutil

from semsearch.core.errors import NotFound
from services.indexer import metrics
from services.indexer.batcher import SearchBatcher
from services.indexer.collection import Collection
from services.indexer.config import ShardSettings
from services.indexer.coordinator import AutoTrainer

log = logging.getLogger(__name__)


class Shard:
    """Owns the collections of one shard process; knows nothing of gRPC."""

    def __init__(self, settings: ShardSettings) -> None:
        self.settings = settings
        self.collections = {
            c.name: Collection(
                c,
                settings.data_dir / c.name,
                fsync=settings.fsync,
                search_budget_bytes=settings.search_budget_bytes,
                min_free_bytes=settings.min_free_bytes,
            )
            for c in settings.collections
        }
        self.batchers = {
            name: SearchBatcher(
                c, max_queries=settings.max_batch_queries, delay_s=settings.batch_delay_ms / 1000
            )
            for name, c in self.collections.items()
        }
        self.loaded = False
        self.trainer: AutoTrainer | None = None
        if settings.shard == 0:
            peers = settings.peers or (
                (f"{settings.host}:{settings.port}",) if settings.num_shards == 1 else ()
            )
            if peers:
                self.trainer = AutoTrainer(peers, settings.collections)
            else:
                log.warning("SEMSEARCH_PEERS is not set: shard 0 cannot coordinate training of %d shards",
                            settings.num_shards)  # fmt: skip

    def collection(self, name: str) -> Collection:
        try:
            return self.collections[name]
        except KeyError:
            known = ", ".join(sorted(self.collections))
            raise NotFound(
                f"unknown collection {name!r} (this shard serves: {known})", "collection"
            ) from None

    def load(self) -> None:
        """Load every collection (snapshot + log replay). Blocking; run it off the event loop."""
        for collection in self.collections.values():
            collection.load()
        self.loaded = True
        self.update_gauges()

    def disk_free(self) -> int:
        return shutil.disk_usage(self.settings.data_dir).free

    @property
    def writable(self) -> bool:
        """False once a collection stopped taking writes (a failed fsync or apply): health follows it."""
        return not any(c.broken for c in self.collections.values())

    def update_gauges(self) -> None:
        metrics.DISK_FREE.set(self.disk_free())
        for name, c in self.collections.items():
            metrics.VECTORS.labels(name).set(c.count)
            metrics.ROWS.labels(name).set(c.items.rows)
            metrics.WRITABLE.labels(name).set(0 if c.broken else 1)
            metrics.GENERATION.labels(name).set(c.generation)
            metrics.REBUILD_PROGRESS.labels(name).set(c.rebuild_progress if c.rebuilding else 0.0)
            metrics.LOG_BYTES.labels(name).set(c.wal.size_bytes)

    def snapshot_all(self, only_if_due: bool = False) -> list[str]:
        """Snapshot collections (all, or those with enough log records since their last one)."""
        done = []
        for name, c in self.collections.items():
            due = c.lsn - c.snapshot_lsn >= self.settings.snapshot_every_records
            if (not only_if_due or due) and c.snapshot():
                done.append(name)
        return done

    def maintain(self) -> None:
        """Due snapshots, then due rebuilds and compactions (started in the background)."""
        self.snapshot_all(only_if_due=True)
        for c in self.collections.values():
            c.maintenance()

    async def run_maintenance(self, interval_s: float = 1.0) -> None:
        """Refresh gauges and run maintain() off the event loop, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.update_gauges()
                await loop.run_in_executor(None, self.maintain)
            except Exception:
                log.exception("maintenance failed")

    async def run_auto_train(self) -> None:
        """Shard 0: train collections that reached their threshold (a training takes minutes; it runs
        apart from maintenance so snapshots go on), until cancelled."""
        if self.trainer is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.auto_train_interval_s)
            try:
                await loop.run_in_executor(None, self.trainer.check)
            except Exception:
                log.exception("auto-train check failed")

    def close(self) -> None:
        """Final snapshot, then close logs and stores."""
        for batcher in self.batchers.values():
            batcher.close()
        if self.loaded:
            self.snapshot_all()
        for c in self.collections.values():
            c.close()
