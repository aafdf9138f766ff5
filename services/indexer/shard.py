"""A shard: its slice of every configured collection, search batchers and snapshot scheduling."""

from __future__ import annotations

import asyncio
import logging

from semsearch.errors import NotFound
from services.indexer import metrics
from services.indexer.batcher import SearchBatcher
from services.indexer.collection import Collection
from services.indexer.config import ShardSettings

log = logging.getLogger(__name__)


class Shard:
    """Owns the collections of one shard process; knows nothing of gRPC."""

    def __init__(self, settings: ShardSettings) -> None:
        self.settings = settings
        self.collections = {
            c.name: Collection(c, settings.data_dir / c.name, fsync=settings.fsync)
            for c in settings.collections
        }
        self.batchers = {
            name: SearchBatcher(
                c, max_queries=settings.max_batch_queries, delay_s=settings.batch_delay_ms / 1000
            )
            for name, c in self.collections.items()
        }
        self.loaded = False
        self._snapshot_task: asyncio.Task | None = None

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

    def update_gauges(self) -> None:
        for name, c in self.collections.items():
            metrics.VECTORS.labels(name).set(c.count)
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

    async def run_maintenance(self, interval_s: float = 1.0) -> None:
        """Refresh gauges and take due snapshots, off the event loop, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.update_gauges()
                await loop.run_in_executor(None, self.snapshot_all, True)
            except Exception:
                log.exception("maintenance failed")

    def close(self) -> None:
        """Final snapshot, then close logs and stores."""
        for batcher in self.batchers.values():
            batcher.close()
        if self.loaded:
            self.snapshot_all()
        for c in self.collections.values():
            c.close()
