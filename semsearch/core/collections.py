"""Collection settings shared by the gateway and the indexer: validated once, in the public API's terms."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

from semsearch.core.errors import InvalidArgument
from semsearch.core.models import (
    IMAGE_DIM,
    IMAGE_MODEL,
    MODEL_DIMS,
    MODEL_KINDS,
    QUERY_MODELS,
    TEXT_DIM,
    TEXT_MODEL,
)

METRICS = ("cosine", "inner_product", "l2")
INDEX_KINDS = ("ivf_pq", "hnsw", "exact")
FIELD_TYPES = ("string", "number")
RAW_DTYPES = ("float32", "float16")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_FIELDS = 32


@dataclass(frozen=True)
class FieldSpec:
    """A metadata field indexed for filters: its name and type."""

    name: str
    type: str


@dataclass(frozen=True)
class CollectionConfig:
    """One collection: dimension, metric, model, index, search defaults. Invalid settings raise
    InvalidArgument naming the field (`spec.<field>`)."""

    name: str
    dim: int
    # "cosine": vectors are L2-normalised on write and query, score = cosine similarity;
    # "inner_product": stored as given, score = inner product; "l2": score = -squared distance.
    metric: str = "cosine"
    # The served embedding model that turns this collection's images or texts into vectors; "" for a
    # collection of vectors only.
    model: str = ""
    # "ivf_pq": exact search until train_threshold vectors, then an IVF-PQ index trained once (memory-
    # lean); "hnsw": the same threshold, then an HNSW graph (low latency at moderate sizes); "exact".
    index: str = "ivf_pq"
    # A FAISS factory string overriding the index kind's default (chosen from the size at training).
    factory: str = ""
    # Vectors (across all shards) at which the index is built; below it, exact search.
    train_threshold: int = 50_000
    # Training sample size (across all shards).
    train_sample: int = 100_000
    # recall@10 target that picks the search depth (nprobe or efSearch) from the measured table.
    recall_target: float = 0.95
    # Exact re-ranking depth: max(rerank_min, rerank_factor * k) candidates per query.
    rerank_factor: int = 10
    rerank_min: int = 100
    # Raw vectors on disk, for exact search, re-ranking and rebuilds.
    raw_dtype: str = "float32"
    max_metadata_bytes: int = 4096
    # Metadata fields indexed for filters.
    fields: tuple[FieldSpec, ...] = ()
    # Store a small thumbnail of each image item (None: yes for image collections).
    thumbnails: bool | None = None

    def __post_init__(self) -> None:
        def bad(field_name: str, message: str) -> InvalidArgument:
            return InvalidArgument(message, f"spec.{field_name}")

        if not NAME.match(self.name or ""):
            raise bad("name", f"{self.name!r}: 1 to 64 letters, digits, '-' or '_'")
        if self.model and self.model not in MODEL_KINDS:
            raise bad("model", f"unknown model {self.model!r} (served: {', '.join(sorted(MODEL_KINDS))})")
        if self.model and self.dim != MODEL_DIMS[self.model]:
            raise bad("dim", f"{self.dim}: model {self.model} makes {MODEL_DIMS[self.model]}-d vectors")
        if not 1 <= self.dim <= 65_536:
            raise bad("dim", f"{self.dim}: must be in [1, 65536]")
        if self.metric not in METRICS:
            raise bad("metric", f"{self.metric!r}: one of {', '.join(METRICS)}")
        if self.index not in INDEX_KINDS:
            raise bad("index", f"{self.index!r}: one of {', '.join(INDEX_KINDS)}")
        if self.raw_dtype not in RAW_DTYPES:
            raise bad("raw_dtype", f"{self.raw_dtype!r}: one of {', '.join(RAW_DTYPES)}")
        if not 0 < self.recall_target <= 1:
            raise bad("recall_target", f"{self.recall_target}: must be in (0, 1]")
        if self.train_threshold < 1_000:
            raise bad("index.exact_until", f"{self.train_threshold}: at least 1,000 vectors")
        if len(self.fields) > MAX_FIELDS:
            raise bad("fields", f"{len(self.fields)} fields, at most {MAX_FIELDS}")
        seen: set[str] = set()
        for i, spec in enumerate(self.fields):
            if not NAME.match(spec.name or ""):
                raise bad(f"fields[{i}].name", f"{spec.name!r}: 1 to 64 letters, digits, '-' or '_'")
            if spec.name in seen:
                raise bad(f"fields[{i}].name", f"field {spec.name!r} is declared twice")
            if spec.type not in FIELD_TYPES:
                raise bad(f"fields[{i}].type", f"{spec.type!r}: one of {', '.join(FIELD_TYPES)}")
            seen.add(spec.name)

    @property
    def normalize(self) -> bool:
        """Vectors are L2-normalised on write and query (the cosine metric)."""
        return self.metric == "cosine"

    @property
    def faiss_l2(self) -> bool:
        return self.metric == "l2"

    @property
    def accepted_kinds(self) -> tuple[str, ...]:
        """Query kinds the collection answers: what its model's served routes embed (an image model's
        collection also answers words, through the bridge), vectors, stored ids."""
        return (*QUERY_MODELS.get(self.model, {}), "vector", "id")

    @property
    def item_kinds(self) -> tuple[str, ...]:
        """Kinds of items the collection stores: its model's content kind (if any), vectors."""
        return ((MODEL_KINDS[self.model],) if self.model else ()) + ("vector",)

    @property
    def stores_thumbnails(self) -> bool:
        return self.thumbnails if self.thumbnails is not None else MODEL_KINDS.get(self.model) == "image"

    @property
    def field_types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.fields}

    def rerank_depth(self, k: int) -> int:
        return max(self.rerank_min, self.rerank_factor * k)

    def factory_for(self, vectors: int) -> str:
        """The FAISS factory string to build at `vectors` vectors (the override if set)."""
        if self.factory:
            return self.factory
        if self.index == "hnsw":
            return "HNSW32,Flat"
        # About 4 sqrt(n) lists, a power of two (1,024 at 50,000 vectors), at least 16, and few enough
        # that k-means sees at least 39 sample vectors per list (2,048 with the default sample).
        nlist = 2 ** round(math.log2(max(16, 4 * math.sqrt(vectors))))
        sample = min(self.train_sample, vectors)
        nlist = max(16, min(nlist, 2 ** int(math.log2(max(16, sample // 39)))))
        # 8 dimensions per PQ sub-quantizer (48 bytes for 384-d), at most 64 sub-quantizers.
        m = next(m for m in range(min(64, max(1, self.dim // 8)), 0, -1) if self.dim % m == 0)
        return f"IVF{nlist},PQ{m}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CollectionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown collection settings: {sorted(unknown)}")
        data = dict(data)
        data["fields"] = tuple(
            FieldSpec(**f) if isinstance(f, dict) else FieldSpec(*f) for f in data.get("fields", ())
        )
        return cls(**data)

    def differences(self, existing: CollectionConfig) -> list[str]:
        """The settings requested here that differ from an `existing` collection's, each as
        'spec.<name>: <existing> exists, <requested> requested'."""
        mine, theirs = self.to_json(), existing.to_json()
        for settings in (mine, theirs):
            settings["fields"] = ", ".join(f"{f['name']}:{f['type']}" for f in settings["fields"]) or "none"
        different = [key for key in mine if mine[key] != theirs[key]]
        return [f"spec.{key}: {theirs[key]!r} exists, {mine[key]!r} requested" for key in different]


def image_collection(name: str = "images", **settings) -> CollectionConfig:
    """An image collection embedded by EfficientNet-Lite0."""
    return CollectionConfig(name=name, dim=IMAGE_DIM, model=IMAGE_MODEL, **settings)


def text_collection(name: str = "texts", **settings) -> CollectionConfig:
    """A text collection embedded by all-MiniLM-L6-v2."""
    return CollectionConfig(name=name, dim=TEXT_DIM, model=TEXT_MODEL, **settings)
