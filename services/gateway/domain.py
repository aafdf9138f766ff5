"""The gateway's domain values: queries, hits, results and items to write (no gRPC, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, str]
    payload: bytes = b""


@dataclass(frozen=True)
class ShardInfo:
    """How one shard answered a search."""

    shard: int
    plan: str
    depth: float
    matched: int
    batch_size: int
    seconds: float = 0.0


@dataclass(frozen=True)
class ShardHits:
    """One shard's answer: hits per query, the index generation that served them, and how."""

    hits: list[list[Hit]]
    generation: int
    info: ShardInfo | None = None


@dataclass
class Query:
    collection: str
    kind: str  # "image", "text", "vector" or "id"
    image: bytes = b""
    text: str = ""
    vector: np.ndarray | None = None
    item_id: str = ""
    k: int = 10
    recall_target: float = 0.0
    nprobe: int = 0
    min_coverage: float = 1.0
    no_cache: bool = False
    include_payloads: bool = False
    filter: str = ""
    exact: bool = False
    timeout_s: float = 5.0


@dataclass
class SearchResult:
    hits: list[Hit]
    shards_answered: int
    shards_queried: int
    generations: dict[int, int]
    cached: bool
    timings: list[tuple[str, float]] = field(default_factory=list)
    model_version: str = ""
    shard_info: list[ShardInfo] = field(default_factory=list)


@dataclass
class UpsertInput:
    id: str
    image: bytes | None = None
    text: str | None = None
    vector: np.ndarray | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    payload: bytes = b""
    # Why the item's vector could not be decoded (a malformed `data`); the item fails alone.
    vector_error: str = ""

    @property
    def kind(self) -> str | None:
        if self.vector is not None:
            return "vector"
        if self.image is not None:
            return "image"
        if self.text is not None:
            return "text"
        return None


@dataclass(frozen=True)
class ShardCollection:
    """A collection's state on one shard."""

    name: str
    count: int
    generation: int
    index: str
    rows: int = 0
    disk_bytes: int = 0
    memory_bytes: int = 0
    rebuilding: bool = False
    rebuild_progress: float = 0.0
    template_id: str = ""
    drift: float = 0.0
    estimated_recall: float = 0.0
    recall_samples: int = 0
