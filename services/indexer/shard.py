"""A shard: its slice of every collection in its catalog, search batchers, catalog changes, maintenance."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading

import faiss

from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.indexer import metrics
from services.indexer.batcher import SearchBatcher
from services.indexer.catalog import Catalog, Entry
from services.indexer.collection import Collection
from services.indexer.config import ShardSettings
from services.indexer.coordinator import AutoTrainer
from services.indexer.monitor import RecallMonitor

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.json"


class Shard:
    """Owns the collections of one shard process; knows nothing of gRPC. Shard 0 (or a shard without
    peers) owns the catalog; the others apply the owner's (services/indexer/catalog.py)."""

    def __init__(self, settings: ShardSettings) -> None:
        self.settings = settings
        self.catalog = Catalog.load(settings.data_dir / CATALOG_FILE)
        self.collections: dict[str, Collection] = {}
        self.batchers: dict[str, SearchBatcher] = {}
        self.loaded = False
        # Catalog changes (create, drop, apply) one at a time.
        self._catalog_lock = threading.RLock()
        self.owner = settings.shard == 0 or not settings.peers
        self.monitor = RecallMonitor(
            settings.recall_sample_rate, settings.recall_samples_per_s, seed=settings.shard
        )
        self.trainer: AutoTrainer | None = None
        if settings.shard == 0:
            peers = settings.peers or (
                (f"{settings.host}:{settings.port}",) if settings.num_shards == 1 else ()
            )
            if peers:
                self.trainer = AutoTrainer(peers, self.configs, settings.retrain_drift)
            else:
                log.warning("SEMSEARCH_PEERS is not set: shard 0 cannot coordinate training of %d shards",
                            settings.num_shards)  # fmt: skip

    def configs(self) -> list[CollectionConfig]:
        return [e.config for e in self.catalog.entries.values()]

    def collection(self, name: str) -> Collection:
        try:
            return self.collections[name]
        except KeyError:
            known = ", ".join(sorted(self.collections)) or "none"
            raise NotFound(
                f"unknown collection {name!r} (this shard serves: {known})", "collection"
            ) from None

    # --- lifecycle ----------------------------------------------------------------------------------

    def _open(self, entry: Entry) -> Collection:
        collection = Collection(
            entry.config,
            self.settings.data_dir / entry.folder,
            fsync=self.settings.fsync,
            search_budget_bytes=self.settings.search_budget_bytes,
            min_free_bytes=self.settings.min_free_bytes,
        )
        collection.exact_filter_max = self.settings.exact_filter_max
        collection.load()
        collection.monitor = self.monitor
        self.collections[entry.config.name] = collection
        self.batchers[entry.config.name] = SearchBatcher(
            collection,
            max_queries=self.settings.max_batch_queries,
            delay_s=self.settings.batch_delay_ms / 1000,
        )
        return collection

    def load(self) -> None:
        """Load every collection of the catalog (snapshot + log replay) and delete folders of collections
        it no longer has. Blocking; run it off the event loop."""
        with self._catalog_lock:
            for entry in self.catalog.entries.values():
                self._open(entry)
            self._remove_unlisted_folders()
        self.loaded = True
        self.monitor.start()
        self.update_gauges()

    def _remove_unlisted_folders(self) -> None:
        root = self.settings.data_dir / "collections"
        listed = {self.settings.data_dir / e.folder for e in self.catalog.entries.values()}
        for folder in root.iterdir() if root.is_dir() else ():
            if folder not in listed:
                log.info("deleting %s: its collection is not in the catalog (dropped)", folder)
                shutil.rmtree(folder, ignore_errors=True)

    # --- catalog changes ----------------------------------------------------------------------------

    def create(self, config: CollectionConfig) -> bool:
        """Add a collection (owner only); True when created, False when it existed with these settings."""
        if not self.owner:
            raise FailedPrecondition(f"this is shard {self.settings.shard}: shard 0 keeps the catalog")
        if config.factory:
            try:
                faiss.index_factory(config.dim, config.factory)
            except RuntimeError as exc:
                raise InvalidArgument(f"{config.factory!r} is not a FAISS factory string: {exc}",
                                      "spec.index.factory") from None  # fmt: skip
        with self._catalog_lock:
            entry, created = self.catalog.create(config)
            if created:
                self.catalog.save(self.settings.data_dir / CATALOG_FILE)
                self._open(entry)
                log.info("collection %s created (catalog version %d)", config.name, self.catalog.version)
            return created

    def drop(self, name: str) -> None:
        """Drop a collection and delete its data (owner only)."""
        if not self.owner:
            raise FailedPrecondition(f"this is shard {self.settings.shard}: shard 0 keeps the catalog")
        with self._catalog_lock:
            entry = self.catalog.drop(name)
            if entry is None:
                raise NotFound(f"unknown collection {name!r}", "name")
            self.catalog.save(self.settings.data_dir / CATALOG_FILE)
            self._close_and_delete(entry)
            log.info("collection %s dropped (catalog version %d)", name, self.catalog.version)

    def apply(self, catalog: Catalog) -> bool:
        """Make this shard's collections match the owner's newer catalog; False when not newer."""
        with self._catalog_lock:
            if catalog.version <= self.catalog.version:
                return False
            old = self.catalog
            for name, entry in old.entries.items():
                newer = catalog.entries.get(name)
                if newer is None or newer.incarnation != entry.incarnation:
                    self._close_and_delete(entry)
            catalog.save(self.settings.data_dir / CATALOG_FILE)
            self.catalog = catalog
            for name, entry in catalog.entries.items():
                if name not in self.collections:
                    self._open(entry)
            log.info(
                "catalog version %d applied: %s",
                catalog.version,
                ", ".join(sorted(catalog.entries)) or "empty",
            )
            return True

    def _close_and_delete(self, entry: Entry) -> None:
        collection = self.collections.pop(entry.config.name, None)
        batcher = self.batchers.pop(entry.config.name, None)
        if batcher is not None:
            batcher.close()
        if collection is not None:
            collection.drop()
        metrics.forget(entry.config.name)
        self.monitor.forget(entry.config.name)
        shutil.rmtree(self.settings.data_dir / entry.folder, ignore_errors=True)

    # --- health and maintenance ---------------------------------------------------------------------

    def disk_free(self) -> int:
        return shutil.disk_usage(self.settings.data_dir).free

    @property
    def writable(self) -> bool:
        """False once a collection stopped taking writes (a failed fsync or apply): health follows it."""
        return not any(c.broken for c in list(self.collections.values()))

    def update_gauges(self) -> None:
        metrics.DISK_FREE.set(self.disk_free())
        # Not while collections are created or dropped (a dropped one's series must stay gone); the
        # next round catches up.
        if not self._catalog_lock.acquire(blocking=False):
            return
        try:
            for name, c in self.collections.items():
                metrics.VECTORS.labels(name).set(c.count)
                metrics.ROWS.labels(name).set(c.items.rows)
                metrics.WRITABLE.labels(name).set(0 if c.broken else 1)
                metrics.GENERATION.labels(name).set(c.generation)
                metrics.REBUILD_PROGRESS.labels(name).set(c.rebuild_progress if c.rebuilding else 0.0)
                metrics.LOG_BYTES.labels(name).set(c.wal.size_bytes)
        finally:
            self._catalog_lock.release()

    def snapshot_all(self, only_if_due: bool = False) -> list[str]:
        """Snapshot collections (all, or those with enough log records since their last one)."""
        done = []
        for name, c in list(self.collections.items()):
            due = c.lsn - c.snapshot_lsn >= self.settings.snapshot_every_records
            if (not only_if_due or due) and not c.dropped and c.snapshot():
                done.append(name)
        return done

    def maintain(self) -> None:
        """Due snapshots, then due rebuilds and compactions (started in the background)."""
        self.snapshot_all(only_if_due=True)
        for c in list(self.collections.values()):
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
        self.monitor.stop()
        for batcher in list(self.batchers.values()):
            batcher.close()
        if self.loaded:
            self.snapshot_all()
        for c in list(self.collections.values()):
            c.close()
