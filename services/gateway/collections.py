"""Collections through the gateway, free of gRPC: create and drop through shard 0 (which keeps the
catalog), describe and list from the catalog plus every shard's numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import InvalidArgument, Unavailable
from services.gateway.domain import ShardCollection
from services.gateway.embedder_client import EmbedderUnavailable
from services.gateway.fanout import gather_shards


@dataclass
class CollectionView:
    """A collection as clients see it: its settings and its state across the shards."""

    config: CollectionConfig
    count: int = 0
    index: str = "exact"
    state: str = "exact"
    model_version: str = ""
    generations: dict[int, int] = field(default_factory=dict)
    shards: dict[int, ShardCollection] = field(default_factory=dict)
    shards_total: int = 0


MAX_SAMPLE = 1_000_000


class Collections:
    """The collection half of GatewayService (services/gateway/service.py), which holds the clients."""

    async def create_collection(self, config: CollectionConfig, timeout_s: float) -> CollectionView:
        """Create (or find, with the same settings) a collection on every shard."""
        catalog = await self.shards[0].create_collection(config, timeout_s)
        self.catalog.update(catalog)
        return (await self._views([config.name], timeout_s))[0]

    async def drop_collection(self, name: str, timeout_s: float) -> None:
        if not name:
            raise InvalidArgument("is empty", "name")
        self.catalog.update(await self.shards[0].drop_collection(name, timeout_s))
        # Cached results of the dropped collection must not be served to a new one of the same name.
        await self.cache.invalidate([name])

    async def describe_collection(self, name: str, timeout_s: float) -> CollectionView:
        await self.config(name)
        return (await self._views([name], timeout_s))[0]

    async def list_collections(self, timeout_s: float) -> list[CollectionView]:
        await self.catalog.refresh(min(timeout_s, 2.0))
        return await self._views(sorted(self.catalog.collections), timeout_s)

    async def sample_items(
        self, name: str, n: int, seed: int, timeout_s: float
    ) -> AsyncIterator[tuple[list[str], np.ndarray, list[dict[str, str]]]]:
        """A uniform random sample of up to n items in chunks of (ids, vectors, metadata); every shard
        contributes in proportion to its items, so a shard that does not answer fails the call."""
        await self.config(name)
        if not 1 <= n <= MAX_SAMPLE:
            raise InvalidArgument(f"must be in [1, {MAX_SAMPLE:,}], got {n}", "n")
        gathered = await gather_shards(self.shards, lambda s, client: client.stats(timeout_s), timeout_s)
        missing = sorted(set(range(len(self.shards))) - set(gathered.answers))
        if missing:
            raise Unavailable(f"shard {missing[0]} does not answer: a sample must cover every shard")
        counts = [
            next((c.count for c in gathered.answers[s] if c.name == name), 0) for s in range(len(self.shards))
        ]
        total = sum(counts)
        for shard, (client, count) in enumerate(zip(self.shards, counts)):
            share = round(n * count / total) if total else 0
            if share:
                async for chunk in client.sample_items(name, share, seed + shard, timeout_s):
                    yield chunk

    async def _views(self, names: list[str], timeout_s: float) -> list[CollectionView]:
        gathered = await gather_shards(self.shards, lambda s, client: client.stats(timeout_s), timeout_s)
        views = []
        for name in names:
            config = await self.config(name)
            view = CollectionView(config, shards_total=len(self.shards))
            if config.model:
                try:
                    view.model_version = await self.embedder.model_version(config.model)
                except EmbedderUnavailable:
                    view.model_version = ""
            for shard, collections in gathered.answers.items():
                for c in collections:
                    if c.name == name:
                        view.shards[shard] = c
                        view.count += c.count
                        view.generations[shard] = c.generation
                        if c.index != "exact":
                            view.index = c.index
            parts = view.shards.values()
            if any(c.rebuilding for c in parts) or (
                any(c.template_id for c in parts) and view.index == "exact"
            ):
                view.state = "building"
            elif view.index != "exact":
                view.state = "indexed"
            views.append(view)
        return views
