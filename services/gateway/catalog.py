"""The gateway's copy of the collection catalog, read from the shards (the newest copy any of them has:
shard 0 owns it, the others follow), refreshed every few seconds and whenever a request names a
collection it does not know: such a request waits for a catalog read that started after it arrived,
so a collection created through another gateway (or another worker of this one) is found at once.
Concurrent misses share that read, and reads for misses start at most every 50 ms."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from services.gateway.shard_client import Catalog, ShardClient

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 2.0
# Requests naming unknown collections start a catalog read at most this often (a flood of bad names
# costs the shards at most 20 reads a second).
MISS_REFRESH_INTERVAL_S = 0.05


class CatalogCache:
    def __init__(self, shards: Sequence[ShardClient]) -> None:
        self.shards = list(shards)
        self.version = -1
        self.collections: dict[str, CollectionConfig] = {}
        # When the latest catalog read started, when the latest finished one started, and the read
        # started for misses, if one is running.
        self._started_at = -1.0
        self._finished_start = -1.0
        self._miss_read: asyncio.Task[bool] | None = None

    def update(self, catalog: Catalog) -> None:
        """Take a catalog copy if it is newer than ours."""
        if catalog.version > self.version:
            self.version, self.collections = catalog.version, dict(catalog.collections)

    async def refresh(self, timeout: float = 2.0) -> bool:
        """Read every shard's copy and keep the newest; False when no shard answered."""
        started = self._started_at = time.monotonic()
        answers = await asyncio.gather(*(s.catalog(timeout) for s in self.shards), return_exceptions=True)
        self._finished_start = max(self._finished_start, started)
        copies = [a for a in answers if not isinstance(a, BaseException)]
        for copy in copies:
            self.update(copy)
        return bool(copies)

    async def get(self, name: str) -> CollectionConfig:
        """The settings of collection `name` (NotFound naming the known collections)."""
        config = self.collections.get(name)
        if config is None:
            if not await self._read_since(time.monotonic()) and self.version < 0:
                raise Unavailable("no shard answers: the collection catalog is unknown")
            config = self.collections.get(name)
        if config is None:
            known = ", ".join(sorted(self.collections)) or "none"
            raise NotFound(f"unknown collection {name!r} (known: {known})", "collection")
        return config

    async def _read_since(self, arrived: float) -> bool:
        """Wait for a catalog read that started at or after `arrived` (shared by concurrent misses);
        False when no shard answered it."""
        answered = True
        while self._finished_start < arrived:
            if self._miss_read is None or self._miss_read.done():
                self._miss_read = asyncio.create_task(self._paced_refresh())
            answered = await asyncio.shield(self._miss_read)
        return answered

    async def _paced_refresh(self) -> bool:
        delay = self._started_at + MISS_REFRESH_INTERVAL_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return await self.refresh()

    async def run(self) -> None:
        """Refresh until cancelled."""
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                await self.refresh()
            except Exception:
                log.exception("catalog refresh failed")
