"""Which shard owns an item: a pure function of its id, shared by the gateway, shards and tools."""

from __future__ import annotations

import hashlib


def id_hash(item_id: str) -> int:
    """A stable 64-bit hash of an item id (blake2b of its UTF-8 bytes)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach): growing from n to n+1 buckets moves only 1/(n+1) of
    the keys, all of them to the new bucket."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_for(item_id: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) that stores `item_id`."""
    return jump_hash(id_hash(item_id), num_shards)
