from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    COSINE: _ClassVar[Metric]
    INNER_PRODUCT: _ClassVar[Metric]
    L2: _ClassVar[Metric]

class IndexKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_KIND_UNSPECIFIED: _ClassVar[IndexKind]
    IVF_PQ: _ClassVar[IndexKind]
    HNSW: _ClassVar[IndexKind]
    EXACT: _ClassVar[IndexKind]

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    STRING: _ClassVar[FieldType]
    NUMBER: _ClassVar[FieldType]
METRIC_UNSPECIFIED: Metric
COSINE: Metric
INNER_PRODUCT: Metric
L2: Metric
INDEX_KIND_UNSPECIFIED: IndexKind
IVF_PQ: IndexKind
HNSW: IndexKind
EXACT: IndexKind
FIELD_TYPE_UNSPECIFIED: FieldType
STRING: FieldType
NUMBER: FieldType

class Vector(_message.Message):
    __slots__ = ("values", "data")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    data: bytes
    def __init__(self, values: _Optional[_Iterable[float]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "vector", "metadata", "payload")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: Vector
    metadata: _containers.ScalarMap[str, str]
    payload: bytes
    def __init__(self, id: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "metadata", "payload")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    metadata: _containers.ScalarMap[str, str]
    payload: bytes
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class IndexSpec(_message.Message):
    __slots__ = ("kind", "exact_until", "factory", "train_sample", "rerank_min")
    KIND_FIELD_NUMBER: _ClassVar[int]
    EXACT_UNTIL_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    RERANK_MIN_FIELD_NUMBER: _ClassVar[int]
    kind: IndexKind
    exact_until: int
    factory: str
    train_sample: int
    rerank_min: int
    def __init__(self, kind: _Optional[_Union[IndexKind, str]] = ..., exact_until: _Optional[int] = ..., factory: _Optional[str] = ..., train_sample: _Optional[int] = ..., rerank_min: _Optional[int] = ...) -> None: ...

class FieldSpec(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ...) -> None: ...

class CollectionSpec(_message.Message):
    __slots__ = ("name", "dim", "metric", "model", "index", "raw_dtype", "recall_target", "fields", "thumbnails")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RAW_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RECALL_TARGET_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    model: str
    index: IndexSpec
    raw_dtype: str
    recall_target: float
    fields: _containers.RepeatedCompositeFieldContainer[FieldSpec]
    thumbnails: bool
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., model: _Optional[str] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ..., raw_dtype: _Optional[str] = ..., recall_target: _Optional[float] = ..., fields: _Optional[_Iterable[_Union[FieldSpec, _Mapping]]] = ..., thumbnails: _Optional[bool] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "seconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    seconds: float
    def __init__(self, stage: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
