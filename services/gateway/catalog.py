"""The gateway's copy of the collection catalog, read from the shards (the newest copy any of them has:
shard 0 owns it, the others follow), refreshed every few seconds and whenever a request names a
collection it does not know."""

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
# A request naming an unknown collection refreshes the copy at most this often.
MISS_REFRESH_INTERVAL_S = 0.3


class CatalogCache:
    def __init__(self, shards: Sequence[ShardClient]) -> None:
        self.shards = list(shards)
        self.version = -1
        self.collections: dict[str, CollectionConfig] = {}
        self._refreshed_at = 0.0

    def update(self, catalog: Catalog) -> None:
        """Take a catalog copy if it is newer than ours."""
        if catalog.version > self.version:
            self.version, self.collections = catalog.version, dict(catalog.collections)

    async def refresh(self, timeout: float = 2.0) -> bool:
        """Read every shard's copy and keep the newest; False when no shard answered."""
        self._refreshed_at = time.monotonic()
        answers = await asyncio.gather(*(s.catalog(timeout) for s in self.shards), return_exceptions=True)
        copies = [a for a in answers if not isinstance(a, BaseException)]
        for copy in copies:
            self.update(copy)
        return bool(copies)

    async def get(self, name: str) -> CollectionConfig:
        """The settings of collection `name` (NotFound naming the known collections)."""
        config = self.collections.get(name)
        if config is None and time.monotonic() - self._refreshed_at >= MISS_REFRESH_INTERVAL_S:
            if not await self.refresh() and self.version < 0:
                raise Unavailable("no shard answers: the collection catalog is unknown")
            config = self.collections.get(name)
        if config is None:
            known = ", ".join(sorted(self.collections)) or "none"
            raise NotFound(f"unknown collection {name!r} (known: {known})", "collection")
        return config

    async def run(self) -> None:
        """Refresh until cancelled."""
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                await self.refresh()
            except Exception:
                log.exception("catalog refresh failed")
