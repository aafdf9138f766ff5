"""Merge per-shard top-k hit lists into one global top-k (a heap over over-fetched candidates)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import TypeVar

H = TypeVar("H")


def merge_topk(per_shard: Iterable[Sequence[H]], k: int, *, key=lambda h: (h.score, h.id)) -> list[H]:
    """The k best hits over all shards' lists (each sorted best first), highest score first;
    a duplicate id (an item moving between shards, a retried write) keeps its best-scored hit.
    Ties break on id so results are deterministic."""
    seen: set[str] = set()
    out: list[H] = []
    merged = heapq.merge(*per_shard, key=lambda h: (-key(h)[0], key(h)[1]))
    for hit in merged:
        item_id = key(hit)[1]
        if item_id in seen:
            continue
        seen.add(item_id)
        out.append(hit)
        if len(out) == k:
            break
    return out
