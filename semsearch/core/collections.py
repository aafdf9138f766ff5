"""Collection settings shared by the gateway and the indexer (no I/O beyond reading a JSON file)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from semsearch.core.models import IMAGE_DIM, IMAGE_MODEL, MODEL_KINDS, TEXT_DIM, TEXT_MODEL

NORMALIZE_POLICIES = ("normalize", "unit", "none")


@dataclass(frozen=True)
class CollectionConfig:
    """One collection: its dimension, trained index type and search defaults."""

    name: str
    dim: int
    # FAISS factory string of the trained index (inner-product metric).
    factory: str = "IVF1024,PQ48"
    # "normalize": the shard L2-normalises vectors; "unit": vectors must already have norm 1
    # (+-1e-3); "none": stored as given.
    normalize: str = "normalize"
    # Vectors (across all shards) at which the coordinator trains the index; below it, exact search.
    train_threshold: int = 50_000
    # Training sample size (across all shards).
    train_sample: int = 100_000
    # recall@10 target that picks the default nprobe from the measured table.
    recall_target: float = 0.95
    # Exact re-ranking depth: max(rerank_min, rerank_factor * k) candidates per query.
    rerank_factor: int = 10
    rerank_min: int = 100
    # Raw vectors on disk for re-ranking and rebuilds.
    raw_dtype: str = "float32"
    max_metadata_bytes: int = 4096
    # The served embedding model that turns this collection's images or texts into vectors; "" for a
    # collection of vectors only.
    model: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"collection name {self.name!r} must be letters, digits, - or _")
        if not 1 <= self.dim <= 65_536:
            raise ValueError(f"collection {self.name}: dim must be in [1, 65536]")
        if self.normalize not in NORMALIZE_POLICIES:
            raise ValueError(f"collection {self.name}: normalize must be one of {NORMALIZE_POLICIES}")
        if self.raw_dtype not in ("float32", "float16"):
            raise ValueError(f"collection {self.name}: raw_dtype must be float32 or float16")
        if self.model and self.model not in MODEL_KINDS:
            raise ValueError(f"collection {self.name}: unknown model {self.model!r}")

    @property
    def accepted_kinds(self) -> tuple[str, ...]:
        """Query kinds the collection answers: its model's content kind (if any), vectors, stored ids."""
        return ((MODEL_KINDS[self.model],) if self.model else ()) + ("vector", "id")

    def rerank_depth(self, k: int) -> int:
        return max(self.rerank_min, self.rerank_factor * k)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CollectionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown collection settings: {sorted(unknown)}")
        return cls(**data)


DEFAULT_COLLECTIONS = (
    # EfficientNet-Lite0 image features (services/embedder).
    CollectionConfig(name="images", dim=IMAGE_DIM, factory="IVF1024,PQ64", model=IMAGE_MODEL),
    # all-MiniLM-L6-v2 sentence embeddings.
    CollectionConfig(name="texts", dim=TEXT_DIM, factory="IVF1024,PQ48", model=TEXT_MODEL),
)


def load_collections(path: str | None) -> tuple[CollectionConfig, ...]:
    """Collections from a JSON file (a list of objects with CollectionConfig's fields), or the
    defaults when no file is configured."""
    if not path:
        return DEFAULT_COLLECTIONS
    data = json.loads(Path(path).read_text())
    collections = tuple(CollectionConfig.from_json(c) for c in data)
    names = [c.name for c in collections]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate collection names in {path}")
    return collections
