"""Collection settings between protobuf (CollectionSpec, shared by the public API and the indexer's
catalog) and the core's CollectionConfig."""

from __future__ import annotations

from semsearch.core.collections import CollectionConfig, FieldSpec
from semsearch.core.errors import InvalidArgument
from semsearch.core.models import MODEL_DIMS
from semsearch.v1 import common_pb2

METRICS = {common_pb2.COSINE: "cosine", common_pb2.INNER_PRODUCT: "inner_product", common_pb2.L2: "l2"}
INDEX_KINDS = {common_pb2.IVF_PQ: "ivf_pq", common_pb2.HNSW: "hnsw", common_pb2.EXACT: "exact"}
FIELD_TYPES = {common_pb2.STRING: "string", common_pb2.NUMBER: "number"}
DEFAULT_EXACT_UNTIL = 50_000
DEFAULT_RECALL_TARGET = 0.95
DEFAULT_TRAIN_SAMPLE = 100_000
DEFAULT_RERANK_MIN = 100


def _enum(value: int, names: dict[int, str], default: int, field: str) -> str:
    if value == 0:
        return names[default]
    if value not in names:
        raise InvalidArgument(f"unknown value {value}", field)
    return names[value]


def config_from_spec(spec: common_pb2.CollectionSpec) -> CollectionConfig:
    """The validated settings of a CollectionSpec, defaults filled in (InvalidArgument names the field)."""
    dim = spec.dim or MODEL_DIMS.get(spec.model, 0)
    fields = []
    for i, f in enumerate(spec.fields):
        if f.type not in FIELD_TYPES:
            raise InvalidArgument("unknown type: STRING or NUMBER", f"spec.fields[{i}].type")
        fields.append(FieldSpec(f.name, FIELD_TYPES[f.type]))
    return CollectionConfig(
        name=spec.name,
        dim=dim,
        metric=_enum(spec.metric, METRICS, common_pb2.COSINE, "spec.metric"),
        model=spec.model,
        index=_enum(spec.index.kind, INDEX_KINDS, common_pb2.IVF_PQ, "spec.index.kind"),
        factory=spec.index.factory,
        train_threshold=spec.index.exact_until or DEFAULT_EXACT_UNTIL,
        train_sample=spec.index.train_sample or DEFAULT_TRAIN_SAMPLE,
        rerank_min=spec.index.rerank_min or DEFAULT_RERANK_MIN,
        recall_target=spec.recall_target or DEFAULT_RECALL_TARGET,
        raw_dtype=spec.raw_dtype or "float32",
        fields=tuple(fields),
        thumbnails=spec.thumbnails if spec.HasField("thumbnails") else None,
    )


def spec_from_config(config: CollectionConfig) -> common_pb2.CollectionSpec:
    metric = {v: k for k, v in METRICS.items()}[config.metric]
    kind = {v: k for k, v in INDEX_KINDS.items()}[config.index]
    types = {v: k for k, v in FIELD_TYPES.items()}
    spec = common_pb2.CollectionSpec(
        name=config.name,
        dim=config.dim,
        metric=metric,
        model=config.model,
        index=common_pb2.IndexSpec(
            kind=kind,
            exact_until=config.train_threshold,
            factory=config.factory,
            train_sample=config.train_sample,
            rerank_min=config.rerank_min,
        ),
        raw_dtype=config.raw_dtype,
        recall_target=config.recall_target,
        fields=[common_pb2.FieldSpec(name=f.name, type=types[f.type]) for f in config.fields],
    )
    if config.thumbnails is not None:
        spec.thumbnails = config.thumbnails
    return spec
