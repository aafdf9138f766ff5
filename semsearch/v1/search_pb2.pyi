from semsearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("collection", "image", "text", "vector", "id", "k", "recall_target", "nprobe", "min_coverage", "no_cache", "include_payloads", "filter", "exact")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RECALL_TARGET_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    MIN_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    NO_CACHE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: bytes
    text: str
    vector: _common_pb2.Vector
    id: str
    k: int
    recall_target: float
    nprobe: int
    min_coverage: float
    no_cache: bool
    include_payloads: bool
    filter: str
    exact: bool
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[bytes] = ..., text: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., id: _Optional[str] = ..., k: _Optional[int] = ..., recall_target: _Optional[float] = ..., nprobe: _Optional[int] = ..., min_coverage: _Optional[float] = ..., no_cache: _Optional[bool] = ..., include_payloads: _Optional[bool] = ..., filter: _Optional[str] = ..., exact: _Optional[bool] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, queries: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class SearchBatchResult(_message.Message):
    __slots__ = ("code", "message", "response")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response: SearchResponse
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response: _Optional[_Union[SearchResponse, _Mapping]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchBatchResult, _Mapping]]] = ...) -> None: ...

class ShardSearchInfo(_message.Message):
    __slots__ = ("shard", "plan", "depth", "matched", "batch_size", "seconds")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    plan: str
    depth: float
    matched: int
    batch_size: int
    seconds: float
    def __init__(self, shard: _Optional[int] = ..., plan: _Optional[str] = ..., depth: _Optional[float] = ..., matched: _Optional[int] = ..., batch_size: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "shards_answered", "shards_queried", "generations", "cached", "timings", "model_version", "shard_info")
    class GenerationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    HITS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_QUERIED_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_INFO_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.Hit]
    shards_answered: int
    shards_queried: int
    generations: _containers.ScalarMap[int, int]
    cached: bool
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    model_version: str
    shard_info: _containers.RepeatedCompositeFieldContainer[ShardSearchInfo]
    def __init__(self, hits: _Optional[_Iterable[_Union[_common_pb2.Hit, _Mapping]]] = ..., shards_answered: _Optional[int] = ..., shards_queried: _Optional[int] = ..., generations: _Optional[_Mapping[int, int]] = ..., cached: _Optional[bool] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ..., model_version: _Optional[str] = ..., shard_info: _Optional[_Iterable[_Union[ShardSearchInfo, _Mapping]]] = ...) -> None: ...

class UpsertItem(_message.Message):
    __slots__ = ("id", "image", "text", "vector", "metadata", "payload")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    text: str
    vector: _common_pb2.Vector
    metadata: _containers.ScalarMap[str, str]
    payload: bytes
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., text: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "items")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[UpsertItem]
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[UpsertItem, _Mapping]]] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("id", "ok", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    ok: bool
    error: str
    def __init__(self, id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("results", "succeeded", "failed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    succeeded: int
    failed: int
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "missing")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[int] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_vectors", "include_payloads")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    include_vectors: bool
    include_payloads: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., include_vectors: _Optional[bool] = ..., include_payloads: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("items", "missing")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "dim", "count", "model", "model_version", "index", "generations", "shards_answered", "shards_total", "spec", "state", "shards", "query_kinds", "item_kinds")
    class GenerationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    QUERY_KINDS_FIELD_NUMBER: _ClassVar[int]
    ITEM_KINDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    count: int
    model: str
    model_version: str
    index: str
    generations: _containers.ScalarMap[int, int]
    shards_answered: int
    shards_total: int
    spec: _common_pb2.CollectionSpec
    state: str
    shards: _containers.RepeatedCompositeFieldContainer[ShardUsage]
    query_kinds: _containers.RepeatedScalarFieldContainer[str]
    item_kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., count: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., index: _Optional[str] = ..., generations: _Optional[_Mapping[int, int]] = ..., shards_answered: _Optional[int] = ..., shards_total: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.CollectionSpec, _Mapping]] = ..., state: _Optional[str] = ..., shards: _Optional[_Iterable[_Union[ShardUsage, _Mapping]]] = ..., query_kinds: _Optional[_Iterable[str]] = ..., item_kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class ShardUsage(_message.Message):
    __slots__ = ("shard", "count", "rows", "disk_bytes", "memory_bytes", "generation", "rebuilding", "rebuild_progress", "drift", "estimated_recall", "recall_samples")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REBUILDING_FIELD_NUMBER: _ClassVar[int]
    REBUILD_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_RECALL_FIELD_NUMBER: _ClassVar[int]
    RECALL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    shard: int
    count: int
    rows: int
    disk_bytes: int
    memory_bytes: int
    generation: int
    rebuilding: bool
    rebuild_progress: float
    drift: float
    estimated_recall: float
    recall_samples: int
    def __init__(self, shard: _Optional[int] = ..., count: _Optional[int] = ..., rows: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., generation: _Optional[int] = ..., rebuilding: _Optional[bool] = ..., rebuild_progress: _Optional[float] = ..., drift: _Optional[float] = ..., estimated_recall: _Optional[float] = ..., recall_samples: _Optional[int] = ...) -> None: ...

class SampleItemsRequest(_message.Message):
    __slots__ = ("collection", "n", "seed")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    collection: str
    n: int
    seed: int
    def __init__(self, collection: _Optional[str] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Metadata(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SampleItemsChunk(_message.Message):
    __slots__ = ("ids", "dim", "vectors", "metadata")
    IDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    dim: int
    vectors: bytes
    metadata: _containers.RepeatedCompositeFieldContainer[Metadata]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., dim: _Optional[int] = ..., vectors: _Optional[bytes] = ..., metadata: _Optional[_Iterable[_Union[Metadata, _Mapping]]] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.CollectionSpec
    def __init__(self, spec: _Optional[_Union[_common_pb2.CollectionSpec, _Mapping]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
