"""The gateway's writes, free of gRPC: validate -> embed -> route -> write -> invalidate the result cache
before acknowledging."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from semsearch.core import filters
from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import InvalidArgument, ServiceError, Unavailable
from semsearch.core.routing import shard_for
from semsearch.media import InputError, thumbnail
from services.gateway import metrics
from services.gateway.domain import UpsertInput
from services.gateway.embedder_client import EmbedderUnavailable
from services.gateway.validation import MAX_ID_BYTES, MAX_PAYLOAD_BYTES, MAX_TEXT_PAYLOAD_CHARS, check_vector


class Writes:
    """The write half of GatewayService (services/gateway/service.py), which holds the clients."""

    async def upsert(
        self, collection: str, items: Sequence[UpsertInput], timeout_s: float
    ) -> list[str | None]:
        """validate -> embed -> route -> write -> invalidate. Returns one error per item (None: durable on
        its shard, and no cached result from before the write is reachable)."""
        config = await self.config(collection)
        if not items:
            raise InvalidArgument("no items", "items")
        if len(items) > self.settings.max_batch:
            raise InvalidArgument(
                f"{len(items)} items, more than the limit of {self.settings.max_batch}", "items"
            )
        deadline = time.monotonic() + timeout_s
        errors: list[str | None] = [
            self._item_error(collection, config, i, item) for i, item in enumerate(items)
        ]
        seen: set[str] = set()
        for i, item in enumerate(items):
            if errors[i] is None and item.id in seen:
                errors[i] = f"items[{i}].id: duplicate id {item.id!r} in one request"
            seen.add(item.id)
        vectors = await self._item_vectors(items, errors, config.dim)
        payloads = await self._item_payloads(items, errors, config)
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            if errors[i] is None:
                by_shard[shard_for(item.id, len(self.shards))].append(i)

        async def write(shard: int, members: list[int]) -> None:
            try:
                await self.shards[shard].upsert(
                    collection,
                    [items[i].id for i in members],
                    vectors[members],
                    [dict(items[i].metadata) for i in members],
                    [payloads[i] for i in members],
                    max(deadline - time.monotonic(), 0.001),
                )
            except ServiceError as exc:
                for i in members:
                    errors[i] = f"items[{i}]: {exc}"

        written = [i for members in by_shard.values() for i in members]
        try:
            await asyncio.gather(*(write(s, m) for s, m in by_shard.items()))
        finally:
            # Also after a failure, a timeout or a cancelled stream: a write may have landed anyway.
            if written:
                await self._invalidate(collection, written, errors)
        ok = sum(e is None for e in errors)
        metrics.ITEMS.labels("ok").inc(ok)
        metrics.ITEMS.labels("failed").inc(len(errors) - ok)
        return errors

    def _item_error(self, collection: str, config, i: int, item: UpsertInput) -> str | None:
        """Why item i cannot be written, in the public API's terms (None: fine so far)."""
        if not item.id or len(item.id.encode("utf-8")) > MAX_ID_BYTES:
            return f"items[{i}].id: must be 1..{MAX_ID_BYTES} bytes"
        kind = item.kind
        if kind is None:
            return f"items[{i}]: needs an image, a text or a vector"
        kinds = config.item_kinds
        if kind not in kinds:
            return (
                f"items[{i}].{kind}: collection {collection!r} takes {' or '.join(kinds)} items, not {kind}s"
            )
        if kind == "vector":
            if item.vector_error:
                return f"items[{i}].vector: {item.vector_error}"
            try:
                check_vector(item.vector, config.dim, f"items[{i}].vector")
            except InvalidArgument as exc:
                return str(exc)
        encoded = json.dumps(dict(item.metadata), ensure_ascii=False, separators=(",", ":")).encode()
        if item.metadata and len(encoded) > config.max_metadata_bytes:
            return f"items[{i}].metadata: {len(encoded)} bytes, more than {config.max_metadata_bytes}"
        if len(item.payload) > MAX_PAYLOAD_BYTES:
            return f"items[{i}].payload: {len(item.payload)} bytes, more than {MAX_PAYLOAD_BYTES}"
        wrong = filters.metadata_error(config.field_types, item.metadata) if item.metadata else None
        if wrong:
            return f"items[{i}].metadata.{wrong[0]}: {wrong[1]}"
        return None

    async def _item_payloads(
        self, items: Sequence[UpsertInput], errors: list[str | None], config: CollectionConfig
    ) -> list[bytes]:
        """What each item keeps besides its vector: the client's payload if given, else a thumbnail of an
        image (when the collection stores them) or the start of a text."""
        loop = asyncio.get_running_loop()
        payloads: list[bytes] = [b""] * len(items)
        pictures = []
        for i, item in enumerate(items):
            if errors[i] is not None:
                continue
            if item.payload:
                payloads[i] = item.payload
            elif item.image is not None and config.stores_thumbnails:
                pictures.append(i)
            elif item.text is not None:
                payloads[i] = item.text[:MAX_TEXT_PAYLOAD_CHARS].encode("utf-8")

        def thumbnails() -> list[bytes]:
            out = []
            for i in pictures:
                try:
                    out.append(thumbnail(items[i].image))
                except InputError:
                    out.append(b"")  # the embedding reported the same item already
            return out

        if pictures:
            for i, small in zip(pictures, await loop.run_in_executor(None, thumbnails)):
                payloads[i] = small
        return payloads

    async def _item_vectors(
        self, items: Sequence[UpsertInput], errors: list[str | None], dim: int
    ) -> np.ndarray:
        """[n, dim] vectors of the items without an error; images and texts embedded in batches (a bad
        one gets its own error)."""
        vectors = np.zeros((len(items), dim), dtype=np.float32)
        by_kind: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            if errors[i] is None:
                by_kind[item.kind].append(i)
        for i in by_kind.pop("vector", []):
            vectors[i] = np.asarray(items[i].vector, dtype=np.float32).reshape(-1)
        for kind, members in by_kind.items():
            try:
                if kind == "image":
                    result = await self.embedder.embed_images([items[i].image for i in members])
                else:
                    result = await self.embedder.embed_texts([items[i].text for i in members])
            except EmbedderUnavailable as exc:
                for i in members:
                    errors[i] = f"items[{i}].{kind}: embedder unavailable ({exc}); retry"
                continue
            for j, i in enumerate(members):
                if result.errors[j]:
                    errors[i] = f"items[{i}].{kind}: {result.errors[j]}"
                else:
                    vectors[i] = result.vectors[j]
        return vectors

    async def _invalidate(self, collection: str, written: list[int], errors: list[str | None]) -> None:
        """Bump the collection's result-cache epoch before acknowledging; shielded, so a cancelled
        stream still finishes it. If Redis does not confirm, the written items are reported failed."""
        try:
            await asyncio.shield(self.cache.invalidate([collection]))
        except Unavailable as exc:
            for i in written:
                if errors[i] is None:
                    errors[i] = f"items[{i}]: {exc}"

    async def delete(self, collection: str, ids: Sequence[str], timeout_s: float) -> tuple[int, list[str]]:
        await self.config(collection)
        if not ids:
            raise InvalidArgument("no ids", "ids")
        by_shard = self._by_shard(ids)
        try:
            results = await asyncio.gather(
                *(self.shards[s].delete(collection, members, timeout_s) for s, members in by_shard.items())
            )
        finally:
            await asyncio.shield(self.cache.invalidate([collection]))
        return sum(r[0] for r in results), [m for r in results for m in r[1]]
