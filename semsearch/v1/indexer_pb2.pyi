from semsearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardRoute(_message.Message):
    __slots__ = ("shard", "num_shards")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    num_shards: int
    def __init__(self, shard: _Optional[int] = ..., num_shards: _Optional[int] = ...) -> None: ...

class ShardUpsertRequest(_message.Message):
    __slots__ = ("collection", "items", "route")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    route: ShardRoute
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ..., route: _Optional[_Union[ShardRoute, _Mapping]] = ...) -> None: ...

class ShardDeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "route")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    route: ShardRoute
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., route: _Optional[_Union[ShardRoute, _Mapping]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("count", "lsn", "data_version", "missing")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    count: int
    lsn: int
    data_version: int
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, count: _Optional[int] = ..., lsn: _Optional[int] = ..., data_version: _Optional[int] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class ShardSearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "k", "nprobe", "recall_target", "rerank", "exclude_ids", "route", "include_payloads", "filter", "exact", "query_matrix", "packed")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RECALL_TARGET_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    QUERY_MATRIX_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    k: int
    nprobe: int
    recall_target: float
    rerank: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    route: ShardRoute
    include_payloads: bool
    filter: str
    exact: bool
    query_matrix: bytes
    packed: bool
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., recall_target: _Optional[float] = ..., rerank: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., route: _Optional[_Union[ShardRoute, _Mapping]] = ..., include_payloads: _Optional[bool] = ..., filter: _Optional[str] = ..., exact: _Optional[bool] = ..., query_matrix: _Optional[bytes] = ..., packed: _Optional[bool] = ...) -> None: ...

class QueryHits(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[_common_pb2.Hit, _Mapping]]] = ...) -> None: ...

class ShardSearchResponse(_message.Message):
    __slots__ = ("results", "generation", "data_version", "index", "nprobe", "batch_size", "plan", "depth", "matched", "hit_counts", "hit_ids", "hit_scores", "hit_metadata", "hit_payloads")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    HIT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    HIT_IDS_FIELD_NUMBER: _ClassVar[int]
    HIT_SCORES_FIELD_NUMBER: _ClassVar[int]
    HIT_METADATA_FIELD_NUMBER: _ClassVar[int]
    HIT_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryHits]
    generation: int
    data_version: int
    index: str
    nprobe: int
    batch_size: int
    plan: str
    depth: float
    matched: int
    hit_counts: _containers.RepeatedScalarFieldContainer[int]
    hit_ids: _containers.RepeatedScalarFieldContainer[str]
    hit_scores: bytes
    hit_metadata: _containers.RepeatedScalarFieldContainer[str]
    hit_payloads: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, results: _Optional[_Iterable[_Union[QueryHits, _Mapping]]] = ..., generation: _Optional[int] = ..., data_version: _Optional[int] = ..., index: _Optional[str] = ..., nprobe: _Optional[int] = ..., batch_size: _Optional[int] = ..., plan: _Optional[str] = ..., depth: _Optional[float] = ..., matched: _Optional[int] = ..., hit_counts: _Optional[_Iterable[int]] = ..., hit_ids: _Optional[_Iterable[str]] = ..., hit_scores: _Optional[bytes] = ..., hit_metadata: _Optional[_Iterable[str]] = ..., hit_payloads: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ShardGetRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_vectors", "route", "include_payloads")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    include_vectors: bool
    route: ShardRoute
    include_payloads: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., include_vectors: _Optional[bool] = ..., route: _Optional[_Union[ShardRoute, _Mapping]] = ..., include_payloads: _Optional[bool] = ...) -> None: ...

class ShardGetResponse(_message.Message):
    __slots__ = ("items", "missing")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = ("name", "dim", "count", "generation", "index", "factory", "data_version", "lsn", "rebuild_progress", "rebuilding", "log_bytes", "index_bytes", "rows", "disk_bytes", "broken", "rebuild_failures", "template_id", "memory_bytes", "metric", "drift", "estimated_recall", "recall_samples", "serving_template_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    REBUILD_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REBUILDING_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    BROKEN_FIELD_NUMBER: _ClassVar[int]
    REBUILD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_RECALL_FIELD_NUMBER: _ClassVar[int]
    RECALL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SERVING_TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    count: int
    generation: int
    index: str
    factory: str
    data_version: int
    lsn: int
    rebuild_progress: float
    rebuilding: bool
    log_bytes: int
    index_bytes: int
    rows: int
    disk_bytes: int
    broken: str
    rebuild_failures: int
    template_id: str
    memory_bytes: int
    metric: str
    drift: float
    estimated_recall: float
    recall_samples: int
    serving_template_id: str
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., count: _Optional[int] = ..., generation: _Optional[int] = ..., index: _Optional[str] = ..., factory: _Optional[str] = ..., data_version: _Optional[int] = ..., lsn: _Optional[int] = ..., rebuild_progress: _Optional[float] = ..., rebuilding: _Optional[bool] = ..., log_bytes: _Optional[int] = ..., index_bytes: _Optional[int] = ..., rows: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., broken: _Optional[str] = ..., rebuild_failures: _Optional[int] = ..., template_id: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., metric: _Optional[str] = ..., drift: _Optional[float] = ..., estimated_recall: _Optional[float] = ..., recall_samples: _Optional[int] = ..., serving_template_id: _Optional[str] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("shard", "num_shards", "collections", "disk_free_bytes", "catalog_version")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    shard: int
    num_shards: int
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStats]
    disk_free_bytes: int
    catalog_version: int
    def __init__(self, shard: _Optional[int] = ..., num_shards: _Optional[int] = ..., collections: _Optional[_Iterable[_Union[CollectionStats, _Mapping]]] = ..., disk_free_bytes: _Optional[int] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("collection", "n", "seed", "include_items")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    n: int
    seed: int
    include_items: bool
    def __init__(self, collection: _Optional[str] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ..., include_items: _Optional[bool] = ...) -> None: ...

class VectorChunk(_message.Message):
    __slots__ = ("rows", "dim", "data", "ids", "metadata")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    data: bytes
    ids: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., data: _Optional[bytes] = ..., ids: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Iterable[str]] = ...) -> None: ...

class InstallTemplateRequest(_message.Message):
    __slots__ = ("collection", "index", "factory", "nprobe_table")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    NPROBE_TABLE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    index: bytes
    factory: str
    nprobe_table: _containers.RepeatedCompositeFieldContainer[NprobeRecall]
    def __init__(self, collection: _Optional[str] = ..., index: _Optional[bytes] = ..., factory: _Optional[str] = ..., nprobe_table: _Optional[_Iterable[_Union[NprobeRecall, _Mapping]]] = ...) -> None: ...

class NprobeRecall(_message.Message):
    __slots__ = ("nprobe", "recall")
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    nprobe: int
    recall: float
    def __init__(self, nprobe: _Optional[int] = ..., recall: _Optional[float] = ...) -> None: ...

class InstallTemplateResponse(_message.Message):
    __slots__ = ("next_generation", "template_id")
    NEXT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    next_generation: int
    template_id: str
    def __init__(self, next_generation: _Optional[int] = ..., template_id: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collections: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("collection", "retrain")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_FIELD_NUMBER: _ClassVar[int]
    collection: str
    retrain: bool
    def __init__(self, collection: _Optional[str] = ..., retrain: _Optional[bool] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("vectors", "train_vectors", "seconds", "default_nprobe", "next_generations", "nprobe_table", "template_id")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NPROBE_FIELD_NUMBER: _ClassVar[int]
    NEXT_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    NPROBE_TABLE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    vectors: int
    train_vectors: int
    seconds: float
    default_nprobe: int
    next_generations: _containers.RepeatedScalarFieldContainer[int]
    nprobe_table: _containers.RepeatedCompositeFieldContainer[NprobeRecall]
    template_id: str
    def __init__(self, vectors: _Optional[int] = ..., train_vectors: _Optional[int] = ..., seconds: _Optional[float] = ..., default_nprobe: _Optional[int] = ..., next_generations: _Optional[_Iterable[int]] = ..., nprobe_table: _Optional[_Iterable[_Union[NprobeRecall, _Mapping]]] = ..., template_id: _Optional[str] = ...) -> None: ...

class ShardCreateCollectionRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.CollectionSpec
    def __init__(self, spec: _Optional[_Union[_common_pb2.CollectionSpec, _Mapping]] = ...) -> None: ...

class ShardDropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CatalogEntry(_message.Message):
    __slots__ = ("spec", "incarnation")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.CollectionSpec
    incarnation: str
    def __init__(self, spec: _Optional[_Union[_common_pb2.CollectionSpec, _Mapping]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class CatalogMessage(_message.Message):
    __slots__ = ("version", "collections")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    collections: _containers.RepeatedCompositeFieldContainer[CatalogEntry]
    def __init__(self, version: _Optional[int] = ..., collections: _Optional[_Iterable[_Union[CatalogEntry, _Mapping]]] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("generation", "rows")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rows: int
    def __init__(self, generation: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...
